"""Remedies: what the healer can do, each with plan, apply, verify, cost and an idempotency key.

* ``plan`` decides the concrete change once (e.g. "champion 7 -> 6") and is
  stored in the HEALING row, so a healer that resumes after a crash applies the
  same change, never a new one computed from a half-changed world.
* ``apply`` is idempotent for its key: run twice, it changes things once.
* ``verify`` looks at fresh evidence (the registry, the lake, the live server),
  never at what ``apply`` said. It may answer "pending" until evidence arrives.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpoints import Lake
from checkpoints.exceptions import (
    CheckpointCorrupted,
    CheckpointNotFound,
    RegistryUnavailable,
    SelfhealError,
    ServingUnavailable,
)
from checkpoints.incidents import Incident
from checkpoints.quarantine import imputed_key
from flows.config import SelfhealConfig
from flows.healer import dlq, schema_evolution
from flows.healer.change import CHANGE_POINT, PRE_DRIFT_VERSION, ChangePoint, locate
from flows.pipeline.stages import ingest
from flows.pipeline.stages.ingest import LandingUnreachable, list_landing, read_file
from flows.pipeline.tables import SILVER, STAGE_TABLES, TRAIN_BATCHES_TAG
from flows.prefect_runs import flow_settings
from flows.registry import CHAMPION, LIGHT, PREVIOUS, PROMOTED_AT_TAG, STORE_ANSWER_SECONDS, Registry
from serving import processes
from serving.client import ServingClient
from serving.registry import ROLLED_BACK_BY_TAG, answer_within

if TYPE_CHECKING:
    from flows.pipeline.flow import ChangeWindow, PipelineResult

logger = logging.getLogger(__name__)


class RemedyFailed(SelfhealError):
    """A healing remedy could not be applied."""


@dataclass(frozen=True)
class Outcome:
    """What apply or verify found.

    Attributes:
        ok: applied / verified.
        detail: one line for the incident log.
        evidence: numbers that back it.
        pending: verify only: no verdict yet (wait for fresh evidence).
    """

    ok: bool
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    pending: bool = False


@dataclass
class HealContext:
    """Everything a remedy may touch."""

    cfg: SelfhealConfig
    config_path: str | None
    lake: Lake
    registry: Registry
    probed_at: dict[str, float] = field(default_factory=dict)
    """When each probe bound to an interval last ran (``time.monotonic``), e.g. ``golden``."""

    @property
    def serving_url(self) -> str:
        return (self.cfg.serving.url or f"http://{self.cfg.serving.host}:{self.cfg.serving.port}").rstrip("/")

    @functools.cached_property
    def server(self) -> ServingClient:
        """The model server's client, made once: the healer asks it several times a second."""
        return ServingClient(self.serving_url)


# -- the model server, from the healer's side --------------------------------------------
def server_ready(ctx: HealContext, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's /ready body when it is ready, else None."""
    try:
        return ctx.server.ready(timeout)
    except ServingUnavailable:
        return None


def server_reload(ctx: HealContext) -> bool:
    """Ask the server to reload its models now; False (logged) when it cannot be asked."""
    return ctx.server.reload()


def pid_file(cfg: SelfhealConfig) -> Path:
    return Path(cfg.home) / "run" / f"serving-{cfg.serving.port}.pid"


def server_pid(cfg: SelfhealConfig) -> int | None:
    """The pid of the server the healer (or ``selfheal up``) started, if it is alive."""
    return processes.read_pid_file(pid_file(cfg))


def start_server(cfg: SelfhealConfig, config_path: str | None) -> int:
    """Start ``selfheal serve`` detached (own session) and record its pid."""
    log_dir = Path(cfg.home) / "run"
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "flows.cli", *(["--config", config_path] if config_path else []), "serve"]
    with open(log_dir / f"serving-{cfg.serving.port}.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file(cfg).write_text(str(proc.pid))
    return proc.pid


def stop_server(cfg: SelfhealConfig, timeout: float = 15.0) -> None:
    """SIGTERM the recorded server and wait for it (it flushes its inference log); SIGKILL it after ``timeout``."""
    pid = server_pid(cfg)
    if pid is not None:
        processes.stop([pid], grace=timeout)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store that does not answer raises: requests' and sqlite3's errors, MLflow's and SQLAlchemy's.

    MLflow's and SQLAlchemy's count only once loaded: an error of theirs cannot exist before.
    """
    errors: list[type[BaseException]] = [OSError, sqlite3.Error]  # requests' errors are OSErrors
    if "mlflow.exceptions" in sys.modules:
        errors.append(sys.modules["mlflow.exceptions"].MlflowException)
    if "sqlalchemy.exc" in sys.modules:
        errors.append(sys.modules["sqlalchemy.exc"].SQLAlchemyError)
    return tuple(errors)


def _run_pipeline(ctx: HealContext, **options: Any) -> PipelineResult:
    """One pipeline flow run in this process; Prefect, MLflow and sklearn are imported for it, here."""
    from flows.pipeline.flow import pipeline_flow

    with flow_settings():
        result: PipelineResult = pipeline_flow(ctx.config_path, **options)
    return result


def tracking_store_error(ctx: HealContext, timeout: float = STORE_ANSWER_SECONDS) -> str | None:
    """None when the tracking store answers within ``timeout`` seconds, else what went wrong.

    A locked or unreachable store can block a client call for a long time (SQLite's
    busy timeout is 20 s); the healer must not stall behind it, so the call is
    abandoned after ``timeout``. Any other error is a bug and surfaces as itself.
    """
    light, name = ctx.registry.light, ctx.registry.model_name
    try:
        if light is not None:  # sqlite:/// or http(s)://: one read without MLflow (seconds of imports) answers it
            answer_within(timeout, "tracking store", lambda: light.model_tags(name))
        else:
            # The client is made inside the bounded call: building MLflow's store reads the database too.
            answer_within(
                timeout, "tracking store", lambda: ctx.registry.client.search_registered_models(max_results=1)
            )
    except RegistryUnavailable as exc:
        return str(exc)
    except _store_errors() as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


# -- remedies ------------------------------------------------------------------------------
class Remedy:
    """Base: subclasses set ``name``/``cost`` and implement apply and verify."""

    name = "remedy"
    cost = 1.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        return {}

    def approval_needed(self, ctx: HealContext, incident: Incident, plan: dict[str, Any]) -> str:
        """Why a person must approve this remedy's ``plan`` for ``incident`` before it starts ("" = no need).

        Besides ``healing.approval``: a remedy whose change depends on evidence it finds
        (e.g. a column mapping) holds itself when that evidence is not strong enough.
        """
        return ""

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        raise NotImplementedError

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        raise NotImplementedError


def _serves(ctx: HealContext, version: str) -> Outcome:
    """Fresh evidence from the live server that it answers with ``version``."""
    ready = server_ready(ctx)
    if ready is None:
        return Outcome(False, f"server at {ctx.serving_url} is not ready", pending=True)
    if str(ready.get("model_version")) != version:
        server_reload(ctx)
        return Outcome(False, f"server still serves v{ready.get('model_version')}, want v{version}", pending=True)
    return Outcome(True, f"server answers with v{version}", {"model_version": version})


class Retrain(Remedy):
    """Run the pipeline, training on the data from the incident's change point on.

    The change point is the incident's (``flows.healer.change``): its first batch when known,
    else the batches that landed since its time. Until ``healing.retrain_min_rows`` labeled
    rows follow the change, the remedy waits (pending: the incident stays HEALING and says
    why). Only an incident with no change point (e.g. a bad deploy) trains on the newest
    ``healing.retrain_window`` batches.
    """

    name, cost = "retrain", 10.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        champion = ctx.registry.by_alias(CHAMPION)
        before = incident.evidence.get(PRE_DRIFT_VERSION) or (champion.version if champion else None)
        change = locate(ctx, ChangePoint.from_evidence(incident.evidence.get(CHANGE_POINT)), before)
        return {
            "from_version": champion.version if champion else None,
            "window_batches": ctx.cfg.healing.retrain_window,
            CHANGE_POINT: change.to_evidence() if change.known else None,
            PRE_DRIFT_VERSION: before,
            "min_rows": ctx.cfg.healing.retrain_min_rows,
        }

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:

        # Idempotent: the pipeline skips landed files, built batches and models already
        # trained on the same silver version with the same config and change point (its train key).
        change = ChangePoint.from_evidence(plan.get(CHANGE_POINT))
        if not change.known:
            result = _run_pipeline(ctx, window_batches=plan["window_batches"])
        else:
            from flows.pipeline.flow import ChangeWindow

            window = ChangeWindow(change.batch, None if change.batch is not None else change.at, plan["min_rows"])
            waiting = _too_few_rows(ctx, window)
            if waiting:
                return Outcome(False, waiting, {CHANGE_POINT: change.to_evidence()}, pending=True)
            result = _run_pipeline(ctx, change=window)
            if result.outcome == "waiting":
                return Outcome(False, result.message, {CHANGE_POINT: change.to_evidence()}, pending=True)
        evidence = {"outcome": result.outcome, "metrics": result.metrics, "champion": result.champion}
        if change.known:
            evidence[CHANGE_POINT] = _with_first_batch(ctx, change).to_evidence()
        ok = result.outcome in ("promoted", "up-to-date")
        return Outcome(ok, f"pipeline {result.outcome}: {result.message}", evidence)

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        champion = ctx.registry.by_alias(CHAMPION)
        if champion is None or (champion.version == plan.get("from_version") and not _from_change(champion, plan)):
            return Outcome(False, "no new champion after retraining")
        metric = ctx.cfg.gate_metric
        score = float(champion.tags.get(f"metric.{metric}", "nan"))
        if not score >= ctx.cfg.gate.minimum:
            return Outcome(False, f"new champion v{champion.version} {metric}={score:.4f} below the minimum")
        served = _serves(ctx, champion.version) if ctx.cfg.serving.url else Outcome(True, "no server configured")
        if not served.ok:
            return served
        return Outcome(True, f"v{champion.version} {metric}={score:.4f} holdout; {served.detail}", {metric: score})


def _from_change(champion: Any, plan: dict[str, Any]) -> bool:
    """The champion already learned only the data from the plan's change batch on (a run took the
    new batches before the healer did): up to date, nothing older to replace."""
    batch = (plan.get(CHANGE_POINT) or {}).get("batch")
    first = str(champion.tags.get(TRAIN_BATCHES_TAG, "")).partition("-")[0]
    return batch is not None and first.isdigit() and int(first) >= int(batch)


def _with_first_batch(ctx: HealContext, change: ChangePoint) -> ChangePoint:
    """``change`` with its first batch: the first that landed at or after its time (when it names none)."""
    if change.batch is not None or change.at is None or not ctx.lake.exists(SILVER):
        return change
    from flows.pipeline.stages import train  # sklearn: only when a change point needs its first batch

    silver = ctx.lake.read(SILVER, columns=["_batch_id", "_ingested_at"]).to_pandas()
    first = train.batch_range(train.since_change(silver, None, change.at))
    return replace(change, batch=first[0], how=f"first batch landed after {change.at.isoformat()}") if first else change


def _too_few_rows(ctx: HealContext, window: ChangeWindow) -> str:
    """Why a change-aware retrain must wait ("" when silver has enough labeled rows after the
    change, or new landing files may bring them: then the pipeline lands them and decides).
    """
    from flows.pipeline.flow import labeled_shortfall

    waiting = labeled_shortfall(ctx.cfg, ctx.lake, window)
    if not waiting:
        return ""
    try:
        taken = ingest.taken_sources(ctx.lake)
        if any(source not in taken for source in list_landing(ctx.cfg.landing.path, ctx.cfg.landing.format)):
            return ""
    except LandingUnreachable:
        pass  # nothing new can land now: the upstream probe reports the outage
    return waiting


class Rollback(Remedy):
    """champion <- previous (the bad champion becomes previous), then reload the server."""

    name, cost = "rollback", 1.0
    #: The alias whose version becomes champion.
    target_alias = PREVIOUS

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        champion, target = ctx.registry.by_alias(CHAMPION), ctx.registry.by_alias(self.target_alias)
        if champion is None or target is None:
            return {"to_version": None}
        refused = incident.evidence.get("refused") or {}
        mismatched = incident.evidence.get("model_version") if incident.cause == "model_mismatch" else None
        return {
            "from_version": champion.version,
            "to_version": target.version,
            # A version the server refused, or whose golden set it answered otherwise, must not become
            # the fallback (a later rollback would promote it).
            "keep_previous": champion.version in (str(refused.get("version")), str(mismatched)),
        }

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        target = plan.get("to_version")
        if target is None:
            return Outcome(False, "no previous version to roll back to")
        if ctx.registry.by_alias(CHAMPION) is None or ctx.registry.by_alias(CHAMPION).version != target:  # type: ignore[union-attr]
            ctx.registry.set_tag(target, PROMOTED_AT_TAG, datetime.now().astimezone().isoformat())  # before the alias
            ctx.registry.set_alias(CHAMPION, target)
            if not plan.get("keep_previous"):
                ctx.registry.set_alias(PREVIOUS, plan["from_version"])
            ctx.registry.set_tag(plan["from_version"], ROLLED_BACK_BY_TAG, key)
        server_reload(ctx)
        return Outcome(True, f"champion v{plan['from_version']} -> v{target}")

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        champion = ctx.registry.by_alias(CHAMPION)
        if champion is None or champion.version != plan.get("to_version"):
            return Outcome(
                False, f"registry champion is {champion and champion.version}, not v{plan.get('to_version')}"
            )
        return _serves(ctx, champion.version) if ctx.cfg.serving.url else Outcome(True, "registry rolled back")


class LightModel(Rollback):
    """Switch the champion to the registered ``light`` model (fast, for latency)."""

    name, cost = "light_model", 1.0
    target_alias = LIGHT


class RecoverTables(Remedy):
    """Set aside the torn newest commit of each stage table that cannot be read.

    A torn log entry is a commit that never finished (a crashed writer on a store without
    atomic puts, a damaged disk): set aside under ``_delta_log/_corrupted/`` (kept for
    inspection), the table reads at its last good version, and the pipeline's next run
    redoes the unfinished run from the last complete manifest, landing each row once.
    """

    name, cost = "recover_tables", 1.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        return {"tables": sorted(torn_tables(ctx.lake))}

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        recovered = {}
        for table in plan["tables"]:
            try:
                recovered[table] = ctx.lake.recover(table)
            except CheckpointNotFound:  # already recovered (a healer killed after this step): nothing torn now
                recovered[table] = ctx.lake.version(table)
        return Outcome(True, f"torn commits set aside; tables read at versions {recovered}", {"versions": recovered})

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        torn = torn_tables(ctx.lake)
        if torn:
            return Outcome(False, f"still torn: {torn}", pending=True)
        return Outcome(True, f"{', '.join(plan['tables']) or 'every stage table'} reads again")


def torn_tables(lake: Lake) -> dict[str, str]:
    """The stage tables whose newest commit cannot be read (each tick: the logs only, no data)."""
    torn = {}
    for table in STAGE_TABLES:
        if not lake.exists(table):
            continue
        try:
            lake.version(table)
        except CheckpointCorrupted as exc:
            torn[table] = str(exc)
    return torn


class QuarantineBackfill(Remedy):
    """Take the clean copy of each quarantined batch from the fallback source and land it."""

    name, cost = "quarantine_backfill", 3.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        files = incident.evidence.get("quarantined", [])
        return {"files": [f["source"] for f in files]}

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:

        fallback = ctx.cfg.landing.fallback
        if not fallback or not plan["files"]:
            return Outcome(False, "no fallback source configured" if not fallback else "no quarantined files named")
        copied = []
        for source in plan["files"]:
            name = Path(source).name
            clean = Path(fallback) / name
            if not clean.exists():
                continue
            target = Path(ctx.cfg.landing.path) / f"backfill-{name}"
            if not target.exists():
                shutil.copyfile(clean, target)
            copied.append(str(target))
        if not copied:
            return Outcome(False, f"the fallback source {fallback} has none of the quarantined batches")
        result = _run_pipeline(ctx)
        return Outcome(True, f"backfilled {len(copied)} batch(es); pipeline {result.outcome}", {"backfilled": copied})

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:

        backfilled = [Path(ctx.cfg.landing.path) / f"backfill-{Path(s).name}" for s in plan["files"]]
        present = [p for p in backfilled if p.exists()]
        landed = [p for p in present if ctx.lake.has_key("bronze", read_file(str(p)).sha256)]
        if not present or len(landed) < len(present):
            return Outcome(False, f"{len(landed)}/{len(present)} backfilled batch(es) in bronze")
        return Outcome(True, f"{len(landed)} clean batch(es) in bronze in place of the quarantined ones")


class Impute(Remedy):
    """Re-land quarantined batches that failed only on missing values, filled with last-good statistics."""

    name, cost = "impute", 2.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        return {"files": [f["stored_at"] for f in incident.evidence.get("quarantined", [])]}

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:

        from flows.pipeline.imputation import impute_quarantined

        landed = impute_quarantined(ctx.cfg, ctx.lake, plan["files"])
        if not landed:
            return Outcome(False, "no quarantined batch could be repaired by imputation")
        return Outcome(True, f"imputed and landed {len(landed)} batch(es)", {"imputed": landed})

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:

        landed = [f for f in plan["files"] if ctx.lake.has_key("bronze", imputed_key(f))]
        if not landed:
            return Outcome(False, "no imputed batch in bronze")
        return Outcome(True, f"{len(landed)} imputed batch(es) in bronze")


class RestartServing(Remedy):
    """Start the server again when its process is gone, else ask it to reload."""

    name, cost = "restart_serving", 1.0

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        if server_ready(ctx) is not None:
            server_reload(ctx)
            return Outcome(True, "server answered; asked it to reload")
        if server_pid(ctx.cfg) is not None:
            stop_server(ctx.cfg)
        pid = start_server(ctx.cfg, ctx.config_path)
        return Outcome(True, f"started the server again (pid {pid})", {"pid": pid})

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        ready = server_ready(ctx)
        if ready is None:
            return Outcome(False, f"{ctx.serving_url}/ready does not answer yet", pending=True)
        return Outcome(True, f"server ready with v{ready.get('model_version')}", {"ready": ready})


class HoldFallback(Remedy):
    """Keep the safest state: a champion in the registry and a server answering; wait out the outage."""

    name, cost = "hold_fallback", 0.0

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        return Outcome(True, "holding the current champion and the server's fallback; pipeline runs deferred")

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        error = tracking_store_error(ctx)
        if error is not None:
            return Outcome(False, f"tracking store still unreachable: {error}", pending=True)
        champion = ctx.registry.by_alias(CHAMPION)

        try:
            list_landing(ctx.cfg.landing.path, ctx.cfg.landing.format)
        except LandingUnreachable as exc:
            return Outcome(False, str(exc), pending=True)
        if ctx.cfg.serving.url and server_ready(ctx) is None:
            return Outcome(False, "server not ready", pending=True)
        return Outcome(True, f"upstream answers again; champion v{champion.version if champion else '-'} held")


class SchemaEvolution(Remedy):
    """Map a quarantined batch's renamed column back to the known one it matches, record it, land the batch.

    See ``flows.healer.schema_evolution``: held for ``selfheal incidents approve`` when
    ``healing.schema_evolution`` is ``approve`` or the evidence is below the auto thresholds.
    """

    name, cost = "schema_evolution", 1.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        return schema_evolution.propose(ctx.cfg, ctx.lake, incident.evidence.get("quarantined", []))

    def approval_needed(self, ctx: HealContext, incident: Incident, plan: dict[str, Any]) -> str:
        return schema_evolution.approval_needed(ctx.cfg, plan)

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        if not plan.get("batches"):
            why = "; ".join(f"{s['source']}: {s['why']}" for s in plan.get("skipped", [])) or "no batch named"
            return Outcome(False, f"no quarantined batch has a renamed column to map: {why}", {"skipped": plan})
        approvals = [t.evidence["by"] for t in incident.transitions if t.evidence.get("approved") == self.name]
        by = str(approvals[-1]) if approvals else "auto"
        results = schema_evolution.apply(ctx.lake, ctx.cfg, plan, incident.id, by)
        missed = {source: r["detail"] for source, r in results.items() if not r["landed"]}
        if missed:
            return Outcome(False, f"mapped but not landed: {missed}", {"mapped": results})
        renamed = {b["source"]: b["renames"] for b in plan["batches"]}
        return Outcome(True, f"mapped and landed {len(results)} batch(es): {renamed}", {"mapped": results})

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        inside, outside = schema_evolution.landed(ctx.lake, plan)
        if outside:
            return Outcome(False, f"not in bronze: {', '.join(outside)}")
        return Outcome(True, f"{len(inside)} mapped batch(es) in bronze under the known column names")


class ReplayDlq(Remedy):
    """Replay the batch rows whose delivery failed (dead-letter kinds ``write``, ``model``) into their output.

    See ``flows.healer.dlq``: the code of ``selfheal dlq replay``, each row landed exactly once.
    A destination still broken fails the replay (its rows keep waiting, with the new reason).
    """

    name, cost = "replay_dlq", 1.0

    def plan(self, ctx: HealContext, incident: Incident) -> dict[str, Any]:
        return {"batches": sorted(dlq.delivery_failed(ctx.lake).batches)}

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        # Batches dead-lettered after the plan are the same fault's: replayed with it.
        batches = sorted({*plan.get("batches", []), *dlq.delivery_failed(ctx.lake).batches})
        results = dlq.replay(ctx.cfg, ctx.lake, batches)
        landed = sum(r.landed + r.found for r in results)
        refused = sum(sum(r.refused.values()) for r in results)
        evidence = {"replayed": batches, "landed": landed, "still_waiting": refused}
        if refused:
            reasons = sum((r.refused for r in results), Counter()).most_common(2)
            return Outcome(False, f"{refused} row(s) still refused: {reasons}", evidence)
        return Outcome(True, f"replayed {len(results)} batch(es): {landed} row(s) landed", evidence)

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        waiting = dlq.delivery_failed(ctx.lake)  # read again: fresh evidence, not what apply said
        if waiting.rows:
            reasons = dict(waiting.reasons.most_common(2))
            return Outcome(False, f"{waiting.rows} delivery-failed row(s) still wait: {reasons}", waiting.to_evidence())
        return Outcome(True, "no delivery-failed row waits in the dead-letter queue")


REMEDIES: dict[str, Callable[[], Remedy]] = {
    cls.name: cls
    for cls in (
        Retrain,
        Rollback,
        LightModel,
        RecoverTables,
        QuarantineBackfill,
        Impute,
        RestartServing,
        HoldFallback,
        SchemaEvolution,
        ReplayDlq,
    )
}


def get_remedy(name: str) -> Remedy:
    """A remedy by its policy name.

    Raises:
        RemedyFailed: no remedy has that name.
    """
    try:
        return REMEDIES[name]()
    except KeyError:
        raise RemedyFailed(f"unknown remedy {name!r}; known: {', '.join(sorted(REMEDIES))}") from None
