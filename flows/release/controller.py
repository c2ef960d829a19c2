"""Progressive delivery: a challenger proves itself on live traffic, then is promoted or rolled back.

A release puts a registered version beside the champion as ``@challenger``, in
``shadow`` (it sees a copy of the traffic, the champion answers) or ``canary``
(it answers a share of the requests, moving up ``release.steps``). Its state is
the registered model's ``selfheal.release`` tag (why there: ``serving.release``),
which every server worker follows on its registry poll and at once after an admin
reload. The analysis (``release_analysis_flow``) measures both arms every
``release.interval_seconds`` (``flows.release.analysis``), appends each measurement
to the lake's ``release_analysis`` table, and acts on the verdict:

- **failed**: traffic back to the champion in this same step (state rolled back,
  ``@challenger`` removed, every worker told by an admin reload), then a
  ``bad_release`` incident is recorded through ``checkpoints.incidents``, so its MTTR is
  measured as the healer's are: from the first failing measurement to the
  verified repair (the server answers without a challenger);
- **successful** after ``release.count`` measurements: promoted (aliases move as the
  pipeline's direct promotion moves them; the champion then takes all traffic);
- **inconclusive**: held at its share for a person (``selfheal release promote|abort``),
  or promoted/aborted as ``release.on_inconclusive`` says.

Example:
    >>> start_release(cfg, "7", "canary")
    >>> release_analysis_flow()            # until the verdict
    >>> release_status(cfg)
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError
from checkpoints.incidents import Incident, IncidentLog, State, new_incident_id
from checkpoints.leases import claim
from checkpoints.rows import arrow_schema, to_row
from flows.config import SelfhealConfig, load_config
from flows.events import emit
from flows.registry import CHALLENGER, CHAMPION, Registry
from flows.release.analysis import Measurement, judge, measure, read_arms, tally
from serving import processes
from serving.client import ServingClient
from serving.registry import OUTCOME_TAG, RELEASE_TAG
from serving.release import Mode, ReleaseState

logger = logging.getLogger(__name__)

ANALYSIS_TABLE = "release_analysis"
BAD_RELEASE = "bad_release"


@dataclass(frozen=True)
class _Round:
    """The release's columns of a ``release_analysis`` row: the measurement's follow, then the verdict."""

    release_id: str
    measurement: int
    ts: datetime
    challenger_version: str
    champion_version: str | None
    mode: str
    share: float


_ANALYSIS_SCHEMA = pa.schema([*arrow_schema(_Round), *arrow_schema(Measurement), ("verdict", pa.string())])


class ReleaseError(SelfhealError):
    """A shadow/canary release cannot be started, promoted or aborted as asked (the message says why)."""


# -- the state in the registry -------------------------------------------------------------
def read_state(registry: Registry) -> ReleaseState | None:
    """The release state on the registered model (None: there never was a release)."""
    return ReleaseState.from_tag(registry.model_tag(RELEASE_TAG))


def write_state(registry: Registry, state: ReleaseState) -> None:
    registry.set_model_tag(RELEASE_TAG, state.to_tag())


def notify_server(cfg: SelfhealConfig) -> bool:
    """Tell a running server to re-read the registry now (every worker follows within a control check).

    Returns whether a server is configured to tell; a failed request is logged, and the
    server's registry poll catches up.
    """
    if not cfg.serving.url:
        return False
    with ServingClient(cfg.serving.url) as server:
        server.reload(timeout=10.0)  # the server answers once its workers were told; its poll covers a miss
    return True


def _emit(state: ReleaseState, what: str) -> None:
    """A ``selfheal.release.<what>`` event (best effort: the registry holds the state)."""
    payload = {"mode": state.mode, "challenger": state.challenger, "share": state.share, "detail": state.detail}
    emit(f"selfheal.release.{what}", f"selfheal.release.{state.release_id}", payload)


# -- starting and ending ---------------------------------------------------------------------
def start_release(cfg: SelfhealConfig, version: str, mode: Mode, *, again: bool = True) -> ReleaseState:
    """Put ``version`` beside the champion as ``@challenger`` in ``mode`` (superseding a running release of another).

    Args:
        again: False returns the ended release of a version that was already released, instead
            of starting it again (the pipeline re-running on the same data must not loop).

    Raises:
        ReleaseError: no champion, the version is the champion, or it was already rolled back.
    """
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        raise ReleaseError(f"model {cfg.model_name!r} has no @champion to compare a challenger with; promote directly")
    if champion.version == version:
        raise ReleaseError(f"version {version} is already the champion")
    record = registry.version(version)
    current = read_state(registry)
    if current is not None and current.owed_incident is not None:  # the last rollback's incident first
        current = _settle_incident(cfg, registry, Lake(cfg.lake.root, cfg.lake.storage_options or None), current)
    if not again and current is not None and current.challenger == version:
        return current
    if record.tags.get(OUTCOME_TAG) == "rolled_back":
        raise ReleaseError(f"version {version} was rolled back by an earlier release; register a new version")
    if current is not None and current.routing:
        if current.challenger == version and current.mode == mode:
            return current
        _end(cfg, registry, current, "superseded", f"superseded by a {mode} release of v{version}")
    share = cfg.release.shadow_share if mode == "shadow" else cfg.release.steps[0]
    now = time.time()
    state = ReleaseState(
        release_id=f"rel-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        mode=mode,
        challenger=version,
        champion=champion.version,
        share=share,
        started_at=now,
        step_started_at=now,
        max_share=share,
        detail=f"{mode} started at {share:.0%}",
    )
    registry.set_alias(CHALLENGER, version)
    write_state(registry, state)
    notify_server(cfg)
    _emit(state, "started")
    logger.info(
        "release %s: v%s as %s challenger of v%s at %.0f%%",
        state.release_id,
        version,
        mode,
        champion.version,
        share * 100,
    )
    return state


def _end(cfg: SelfhealConfig, registry: Registry, state: ReleaseState, status: str, detail: str) -> ReleaseState:
    """Stop routing to the challenger: state first (the workers' next look sends everything to the champion)."""
    ended = state.evolve(status=status, share=0.0, detail=detail)
    write_state(registry, ended)
    challenger = registry.by_alias(CHALLENGER)
    if challenger is not None and challenger.version == state.challenger:
        registry.delete_alias(CHALLENGER)
    if status == "rolled_back":
        registry.set_tag(state.challenger, OUTCOME_TAG, "rolled_back")
    notify_server(cfg)
    _emit(ended, status)
    return ended


def promote_release(
    cfg: SelfhealConfig, detail: str = "promoted by hand", state: ReleaseState | None = None
) -> ReleaseState:
    """The challenger becomes champion (the old one ``@previous``) and takes all traffic.

    Raises:
        ReleaseError: no release is running.
    """
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    state = state or _running(registry)
    registry.promote(state.challenger)
    registry.set_tag(state.challenger, OUTCOME_TAG, "promoted")
    done = state.evolve(status="promoted", share=1.0, max_share=1.0, detail=detail)
    write_state(registry, done)
    notify_server(cfg)
    _emit(done, "promoted")
    logger.info("release %s: v%s promoted (%s)", state.release_id, state.challenger, detail)
    return done


def abort_release(cfg: SelfhealConfig, detail: str = "aborted by hand", *, rolled_back: bool = False) -> ReleaseState:
    """Send all traffic back to the champion and withdraw the challenger.

    Raises:
        ReleaseError: no release is running.
    """
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    return _end(cfg, registry, _running(registry), "rolled_back" if rolled_back else "aborted", detail)


def _running(registry: Registry) -> ReleaseState:
    state = read_state(registry)
    if state is None or not state.routing:
        status = "no release was ever started" if state is None else f"the last release is {state.status}"
        raise ReleaseError(f"no release is running ({status}); start one with `selfheal release start`")
    return state


# -- the analysis ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TickResult:
    """What one analysis step did."""

    state: ReleaseState | None
    action: str
    """idle | waiting | measured | shifted | promoted | rolled_back | held | aborted"""
    measurements: tuple[Measurement, ...] = ()


def _record(lake: Lake, state: ReleaseState, index: int, measurements: list[Measurement], verdict: str) -> bool:
    """Append one measurement round; False when another analysis already recorded this round."""
    round_ = _Round(
        state.release_id, index, datetime.now(UTC), state.challenger, state.champion, state.mode, state.share
    )
    rows = [{**to_row(round_), **to_row(m), "verdict": verdict} for m in measurements]
    table = pa.Table.from_pylist(rows, schema=_ANALYSIS_SCHEMA)
    return not lake.append_once(ANALYSIS_TABLE, table, key=f"release:{state.release_id}:{index}").duplicate


def _next_share(cfg: SelfhealConfig, state: ReleaseState, now: float) -> ReleaseState | None:
    steps = cfg.release.steps
    if state.mode != "canary" or state.step + 1 >= len(steps) or now - state.step_started_at < cfg.release.step_seconds:
        return None
    share = steps[state.step + 1]
    return state.evolve(
        step=state.step + 1,
        share=share,
        step_started_at=now,
        max_share=max(state.max_share, share),
        detail=f"canary at {share:.0%}",
    )


@task(name="release-analysis-step", cache_policy=NO_CACHE)
def analysis_step(cfg: SelfhealConfig, *, force: bool = False) -> TickResult:
    """Measure the running release if a measurement is due (or ``force``), then act on the verdict."""
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    state = read_state(registry)
    if state is not None and state.owed_incident is not None:  # a rollback whose incident the lake cut off
        settled = _settle_incident(cfg, registry, Lake(cfg.lake.root, cfg.lake.storage_options or None), state)
        return TickResult(settled, "rolled_back")
    if state is None or state.status != "running":
        return TickResult(state, "idle")
    now = time.time()
    due = state.started_at + (state.measurements + 1) * cfg.release.interval_seconds
    if not force and now < due:
        shifted = _next_share(cfg, state, now)
        if shifted is not None:
            write_state(registry, shifted)
            notify_server(cfg)
            return TickResult(shifted, "shifted")
        return TickResult(state, "waiting")
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    measurements = measure(
        read_arms(lake, state), cfg.release, cfg.release.quality_metric or cfg.gate_metric, cfg.data.task
    )
    counts = tally(state.counts, measurements)
    verdict, why = judge(counts, state.measurements + 1, cfg.release)
    if not _record(lake, state, state.measurements, measurements, verdict):
        return TickResult(state, "waiting")  # another analysis took this measurement
    state = state.evolve(measurements=state.measurements + 1, counts=counts, detail=why)
    return TickResult(_act(cfg, registry, lake, state, verdict, measurements), _ACTIONS[verdict], tuple(measurements))


_ACTIONS = {"continue": "measured", "successful": "promoted", "failed": "rolled_back", "inconclusive": "held"}


def _act(
    cfg: SelfhealConfig,
    registry: Registry,
    lake: Lake,
    state: ReleaseState,
    verdict: str,
    measurements: list[Measurement],
) -> ReleaseState:
    if verdict == "failed":
        # Traffic first, with the incident owed in the same registry write: if the lake fails
        # while the incident is written, the next look finishes it (``_settle_incident``).
        detected_at = datetime.now(UTC)
        failed = [asdict(m) for m in measurements if m.phase == "failed"]
        owed = {"id": new_incident_id(detected_at), "detected_at": detected_at.isoformat(), "failed": failed}
        ended = _end(cfg, registry, state.evolve(owed_incident=owed), "rolled_back", f"rolled back: {state.detail}")
        return _settle_incident(cfg, registry, lake, ended)
    if verdict == "successful":
        return promote_release(cfg, f"analysis successful: {state.detail}", state)
    if verdict == "inconclusive":
        if cfg.release.on_inconclusive == "promote":
            return promote_release(cfg, f"inconclusive, promoted by policy: {state.detail}", state)
        if cfg.release.on_inconclusive == "abort":
            return _end(cfg, registry, state, "aborted", f"inconclusive, aborted by policy: {state.detail}")
        held = state.evolve(status="inconclusive", detail=f"held for a person: {state.detail}")
        write_state(registry, held)
        _emit(held, "inconclusive")
        return held
    write_state(registry, _next_share(cfg, state, time.time()) or state)
    return state


# -- the incident -----------------------------------------------------------------------------
def _server_without_challenger(cfg: SelfhealConfig, challenger: str, timeout: float = 30.0) -> str:
    """Wait until the server's workers answer without the challenger; what was verified."""
    if not cfg.serving.url:
        return "no server configured: the registry no longer routes to the challenger"

    url = f"{cfg.serving.url.rstrip('/')}/ready"
    seen, clean = "no answer", 0

    def clean_everywhere() -> bool:
        nonlocal seen, clean
        try:
            ready = client.get(url).json()
        except (httpx.HTTPError, ValueError) as exc:
            seen, clean = f"{type(exc).__name__}: {exc}", 0
            return False
        release = ready.get("release")
        clean = clean + 1 if release is None or release.get("challenger") != challenger else 0
        seen = f"worker {ready.get('pid')} serves v{ready.get('model_version')} with release {release}"
        return clean >= 2 * max(1, cfg.serving.workers)  # new connections land on every worker

    with httpx.Client(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        try:
            processes.wait_until(clean_everywhere, timeout, f"the server to drop v{challenger}", interval=0.1)
        except TimeoutError:
            raise ReleaseError(f"the server still routes to v{challenger} after {timeout:g}s: {seen}") from None
    return f"server answers without v{challenger} ({seen})"


def _settle_incident(cfg: SelfhealConfig, registry: Registry, lake: Lake, state: ReleaseState) -> ReleaseState:
    """Record the rolled-back release's owed incident, then clear the debt in the registry.

    Raises:
        LakeUnreachable: the lake failed a write; the registry still owes the incident.
    """
    assert state.owed_incident is not None
    _record_incident(cfg, lake, state, state.owed_incident)
    settled = state.evolve(owed_incident=None)
    write_state(registry, settled)
    return settled


def _record_incident(cfg: SelfhealConfig, lake: Lake, state: ReleaseState, owed: dict[str, Any]) -> None:
    """A ``bad_release`` incident through the incident log, RESOLVED once the repair is verified.

    The rollback itself is already done (traffic first); the rows are written as the
    steps complete, with the detection time of the failing measurement, so the MTTR is
    computed by ``checkpoints.incidents`` exactly as the healer's. Called again for the
    same ``owed`` (its first call cut off by the lake), it goes on from the incident's last row.
    """
    evidence = {
        "release_id": state.release_id,
        "challenger": state.challenger,
        "champion": state.champion,
        "failed": owed["failed"],
    }
    log = IncidentLog(lake)
    # Hold the incident before anyone can see it: a healer ticking between the two would take
    # it, find no remedy for this cause and escalate it while the rollback is being verified.
    incident_id = str(owed["id"])
    claim(lake, incident_id, datetime.now(UTC))
    step: Incident | None = log.get(incident_id) or log.open(
        BAD_RELEASE, evidence, detected_at=datetime.fromisoformat(owed["detected_at"]), incident_id=incident_id
    )
    if step is not None and step.state is State.DETECTED:
        step = log.advance(step, State.DIAGNOSED, evidence=evidence, detail="release analysis failed")
    if step is not None and step.state is State.DIAGNOSED:
        plan = {"plan": {"to": state.champion}}
        step = log.advance(step, State.HEALING, remedy="release_rollback", attempt=1, evidence=plan, detail="")
    if step is not None and step.state is State.HEALING:
        step = log.advance(
            step,
            State.VERIFYING,
            remedy="release_rollback",
            attempt=1,
            evidence={"applied_at": datetime.now(UTC).isoformat()},
            detail=f"traffic back to v{state.champion}, @challenger v{state.challenger} withdrawn",
        )
    if step is None or step.state is not State.VERIFYING:
        return  # another writer moved it on, or it is closed already
    try:
        verified = _server_without_challenger(cfg, state.challenger)
    except ReleaseError as exc:
        log.advance(step, State.ESCALATED, remedy="release_rollback", attempt=1, detail=f"escalated: {exc}")
        logger.error("release %s: rollback not verified: %s", state.release_id, exc)
        return
    resolved = log.advance(step, State.RESOLVED, remedy="release_rollback", attempt=1, detail=f"verified: {verified}")
    if resolved is not None:
        logger.warning(
            "release %s rolled back; incident %s RESOLVED in %.1f s",
            state.release_id,
            resolved.id,
            resolved.mttr_seconds or 0.0,
        )


# -- the flow and the controller loop ---------------------------------------------------------
@flow(name="selfheal-release-analysis")
def release_analysis_flow(config_path: str | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """Analyse the running release until its verdict (or ``max_seconds``); returns its final state."""
    cfg = load_config(config_path)
    deadline = time.monotonic() + (max_seconds if max_seconds is not None else float("inf"))
    result = analysis_step(cfg)
    while result.state is not None and result.state.status == "running" and time.monotonic() < deadline:
        time.sleep(min(1.0, cfg.release.interval_seconds / 4))
        result = analysis_step(cfg)
    return asdict(result.state) if result.state is not None else {}


def release_status(cfg: SelfhealConfig) -> dict[str, Any]:
    """The release state, the aliases, and the newest measurement of each metric."""
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    state = read_state(registry)
    aliases = {k: (v.version if v else None) for k, v in registry.aliases().items()}
    latest: list[dict[str, Any]] = []
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    if state is not None and lake.exists(ANALYSIS_TABLE):
        rows = lake.read(ANALYSIS_TABLE)
        mine = rows.filter(pc.equal(rows.column("release_id"), state.release_id)).to_pylist()
        last = max((r["measurement"] for r in mine), default=None)
        latest = [{k: v for k, v in r.items() if k not in ("release_id",)} for r in mine if r["measurement"] == last]
    return {"release": asdict(state) if state else None, "aliases": aliases, "last_measurement": latest}


def status_json(cfg: SelfhealConfig) -> str:
    return json.dumps(release_status(cfg), indent=2, default=str)
