"""The training pipeline: ingest -> validate -> features -> train -> evaluate -> promote.

The flow only wires stage functions (``flows.pipeline.stages``) as tasks. The run is one
Prefect ``transaction()``; every task that writes has an ``on_rollback`` hook
that puts its table (or the registry aliases) back at the last consistent
manifest, so a failed stage or a refused gate leaves nothing half-done.

Resume after a crash (Prefect never retries a Crashed run): every write is
keyed, so the next run skips files already in bronze, batches already in
silver, and a model already trained on the same silver version with the same
config and code (found in the registry by its ``selfheal.train_key`` tag).
Prefect's own result cache cannot do that last part here: inside a
transaction, cached results are written only when the outermost transaction
commits, so a ``kill -9`` loses them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.tasks import exponential_backoff
from prefect.transactions import Transaction, get_transaction, transaction

from checkpoints import Lake
from checkpoints.exceptions import SchemaMismatch, SelfhealError
from checkpoints.schema_mappings import renames as recorded_renames
from flows.config import SelfhealConfig, load_config
from flows.monitor.batch import BatchScoring, log_landed_batches
from flows.monitor.detectors.performance import per_batch_metrics
from flows.monitor.passes import batch_pass
from flows.pipeline import golden
from flows.pipeline.exceptions import PromotionRejected, ValidationFailed
from flows.pipeline.stages import evaluate, features, ingest, train
from flows.pipeline.stages.batch_io import read_batch
from flows.pipeline.stages.column_mapping import apply_renames
from flows.pipeline.stages.validate import (
    ValidationOutcome,
    check_config_columns,
    missing_config_columns,
    validate_batch,
)
from flows.pipeline.tables import BRONZE as BRONZE  # re-exported: the names' old home
from flows.pipeline.tables import CHANGE_TAG as CHANGE_TAG
from flows.pipeline.tables import SILVER as SILVER
from flows.pipeline.tables import SINCE_BATCH_TAG as SINCE_BATCH_TAG
from flows.pipeline.tables import STAGE_TABLES as STAGE_TABLES
from flows.pipeline.tables import TRAIN_BATCHES_TAG as TRAIN_BATCHES_TAG
from flows.pipeline.tables import locked_schema as locked_schema
from flows.registry import CHALLENGER, CHAMPION, PREVIOUS, PROMOTED_AT_TAG, Registry
from flows.release.controller import notify_server, read_state, start_release, write_state
from serving.modelio import load_version, log_sklearn_model, mlflow_uris
from serving.registry import BRONZE_VERSION_TAG, SILVER_VERSION_TAG, TRAIN_KEY_TAG, WINDOW_TAG, ModelRefused

logger = logging.getLogger(__name__)


@dataclass
class LandingSummary:
    """What the validate stage did with the new files."""

    accepted: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0
    notes: list[str] = field(default_factory=list)
    resent: dict[str, int] = field(default_factory=dict)
    """File name -> rows not landed because their id was already in bronze."""
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    """File name -> rows validation removed from the accepted batch, by cause (``duplicates``, ``null_label``)."""


@dataclass
class PipelineResult:
    """The outcome of one pipeline run (also stored in its manifest's meta)."""

    outcome: str
    """promoted | released (shadow/canary) | rejected | nothing-new | up-to-date | waiting (too few
    labeled rows after the change point to train on)"""
    message: str
    bronze_version: int | None = None
    silver_version: int | None = None
    champion: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    landing: LandingSummary = field(default_factory=LandingSummary)
    resumed: bool = False
    monitored: BatchScoring | None = None
    """What batch monitoring did with this run's batches (None: nothing landed, or it is off)."""


@functools.cache
def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    version = importlib.metadata.version("selfheal")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{sha}" if sha else version


def open_lake(cfg: SelfhealConfig) -> Lake:
    return Lake(cfg.lake.root, cfg.lake.storage_options or None)


def known_labels(lake: Lake, cfg: SelfhealConfig) -> list[Any] | None:
    """Label classes already in bronze (classification), so a batch with a new class is refused."""
    if cfg.data.task == "regression" or not lake.exists(BRONZE):
        return None
    values = pc.unique(lake.read(BRONZE, columns=[cfg.data.target]).column(cfg.data.target)).to_pylist()
    return sorted(v for v in values if v is not None) or None


# -- rollback: back to the last consistent manifest ---------------------------------
def _restore_to_manifest(lake: Lake, table: str) -> None:
    manifest = lake.last_manifest()
    if manifest is not None and table in manifest.stages:
        lake.restore(table, manifest.stages[table])
    elif lake.exists(table):
        # The table was born in this run: nothing consistent came before it.
        lake.restore(table, 0)
        lake.overwrite(table, lake.read(table).slice(0, 0))


def _remember(**values: Any) -> None:
    """Keep values in the running task's transaction for its rollback hook.

    Outside a transaction (a stage called plainly, e.g. ``train_task.fn`` in a
    benchmark) there is nothing to roll back, so nothing is kept.
    """
    txn = get_transaction()
    for name, value in values.items():
        if txn is not None:
            txn.set(name, value)


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a Prefect run, this module's logger outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


# -- tasks ---------------------------------------------------------------------------
#: Transient read errors: Prefect task retries, exponential backoff with jitter.
_RETRY_DELAYS = exponential_backoff(backoff_factor=0.5)


@task(name="list-landing", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=_RETRY_DELAYS, retry_jitter_factor=0.5)
def list_landing_task(path: str, fmt: str) -> list[str]:
    return ingest.list_landing(path, fmt)


@task(
    name="read-new-landing-files",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=_RETRY_DELAYS,
    retry_jitter_factor=0.5,
)
def read_new_files_task(cfg: SelfhealConfig, sources: list[str]) -> list[ingest.LandingFile]:
    """Read and digest the listed files that are complete; keep those not yet in bronze or the quarantine.

    One task run for the whole listing, not one per file, so a run's task count (and
    Prefect's work) does not grow with the landing zone's history. A file still being
    written waits for a later run. A file that cannot be read is skipped (a later run
    tries again) unless none can: then the landing zone is unreachable, the task
    fails and Prefect retries it. A new file at a path already taken with other
    content is passed on refused (changed after it was taken: quarantined, never
    ingested a second time).
    """
    log = _log()
    lake = open_lake(cfg)
    fresh, pending, unreadable = [], [], []
    for source in sources:
        try:
            file = ingest.read_if_complete(source, cfg.landing.format, cfg.landing.settle_seconds)
        except ingest.LandingUnreachable as exc:
            unreadable.append(str(exc))
            continue
        if file is None:
            pending.append(source.rsplit("/", 1)[-1])
        elif not ingest.already_taken(lake, file.sha256):
            fresh.append(file)
    if unreadable and len(unreadable) == len(sources):
        raise ingest.LandingUnreachable(f"no landing file could be read: {unreadable[0]}")
    for reason in unreadable:
        log.warning("skipped for this run: %s", reason)
    if pending:
        log.info("%d file(s) still being written, left for a later run: %s", len(pending), ", ".join(pending))
    if fresh:
        taken = ingest.taken_sources(lake)
        fresh = [replace(f, refused=ingest.changed_after_taken(f, taken)) for f in fresh]
    log.info("%d landing file(s), %d new", len(sources), len(fresh))
    return fresh


def _refuse(
    lake: Lake, file: ingest.LandingFile, reason: str, summary: LandingSummary, failures: list[dict[str, Any]]
) -> None:
    lake.quarantine(file.raw, file.source, reason, failures)
    summary.quarantined.append((file.name, reason))
    _log().warning("quarantined %s: %s", file.name, reason)


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _read(cfg: SelfhealConfig, file: ingest.LandingFile) -> pd.DataFrame | str:
    """``file`` as a frame, or why it cannot be read (its content's fault: a reason to quarantine it)."""
    try:
        return read_batch(file.raw, file.name, cfg.landing.format)
    except Exception as exc:  # noqa: BLE001 - one file's content must not stop the run
        return _content_error(file, exc)


def _validated(
    cfg: SelfhealConfig,
    file: ingest.LandingFile,
    frame: pd.DataFrame | str,
    schema: dict[str, str] | None,
    labels: list[Any] | None,
) -> ValidationOutcome | str:
    """The validate stage's outcome for one file, or why it cannot be read or checked at all.

    Any error here comes from the file's content (its bytes are in memory), so it is the
    file's reason for quarantine, never the run's failure.
    """
    if isinstance(frame, str):
        return frame
    try:
        return validate_batch(frame, cfg, schema, known_labels=labels)
    except Exception as exc:  # noqa: BLE001 - one file's content must not stop the run
        return _content_error(file, exc)


def _content_error(file: ingest.LandingFile, exc: Exception) -> str:
    if isinstance(exc, ValidationFailed):
        return str(exc)
    logger.debug("validating %s raised", file.name, exc_info=True)
    return f"{file.name}: cannot be validated: {_one_line(exc)}"


@task(name="validate-and-land", cache_policy=NO_CACHE)
def land_task(cfg: SelfhealConfig, files: list[ingest.LandingFile], batch_offset: int) -> LandingSummary:
    """Validate each file; good rows to bronze with lineage, bad files to quarantine.

    One file's content never fails the run: whatever goes wrong reading, validating or
    landing it quarantines that file with the error as its reason. With
    ``data.id_columns``, rows whose id is already in bronze are not landed again
    (counted per file in ``LandingSummary.resent``).
    """
    lake = open_lake(cfg)
    summary = LandingSummary()
    schema = locked_schema(lake, cfg)
    labels = known_labels(lake, cfg)
    ids = ingest.landed_ids(lake, cfg.data.id_columns)
    renames = recorded_renames(lake)  # the schema mappings a repair recorded, applied before validation
    frames: dict[int, pd.DataFrame | str] = {}
    # Bronze can exist empty (a first run rolled back): the check waits for a batch that lands.
    if not lake.has_rows(BRONZE):
        _check_config_columns(cfg, files, frames)
    for i, file in enumerate(files):
        if file.refused:
            _refuse(lake, file, file.refused, summary, [{"check": "read_once", "error": file.refused}])
            continue
        frame = frames.pop(i) if i in frames else _read(cfg, file)
        if renames and isinstance(frame, pd.DataFrame):
            frame, mapped = apply_renames(frame, renames)
            summary.notes.extend(f"{file.name}: {note}" for note in mapped)
        outcome = _validated(cfg, file, frame, schema, labels)
        if isinstance(outcome, str) or not outcome.accepted or outcome.data is None:
            reason = outcome if isinstance(outcome, str) else outcome.reason
            failures = [] if isinstance(outcome, str) else outcome.failures
            _refuse(lake, file, reason, summary, failures or [{"check": "readable", "error": reason}])
            continue
        try:
            _land_rows(cfg, lake, file, outcome, batch_offset + i, ids, summary)
        except SchemaMismatch as exc:
            reason = f"{file.name}: does not fit bronze: {_one_line(exc)}"
            _refuse(lake, file, reason, summary, [{"check": "bronze_schema", "error": reason}])
            continue
        schema = schema or outcome.schema
        labels = labels or outcome.labels
    return summary


def _check_config_columns(
    cfg: SelfhealConfig, files: list[ingest.LandingFile], frames: dict[int, pd.DataFrame | str]
) -> None:
    """Into an empty lake: some readable file has every column the config names, else ``ConfigError``.

    Files are read in order until one has them all (usually the first); the frames read
    are kept in ``frames`` for the landing loop, so no file is read twice.
    """
    readable: list[tuple[str, pd.DataFrame]] = []
    for i, file in enumerate(files):
        if file.refused:
            continue
        frames[i] = _read(cfg, file)
        frame = frames[i]
        if isinstance(frame, pd.DataFrame):
            readable.append((file.name, frame))
            if not missing_config_columns(frame, cfg.data):
                return
    check_config_columns(readable, cfg.data)


def _land_rows(
    cfg: SelfhealConfig,
    lake: Lake,
    file: ingest.LandingFile,
    outcome: ValidationOutcome,
    batch_id: int,
    ids: set[str],
    summary: LandingSummary,
) -> None:
    """Append one accepted file's rows to bronze (keyed by its digest), minus rows already there by id."""
    assert outcome.data is not None
    rows = outcome.data.copy()
    rows["_source_file"] = file.source
    rows["_sha256"] = file.sha256
    rows["_row"] = range(len(rows))
    rows["_ingested_at"] = pd.Timestamp(datetime.now(UTC))
    rows["_batch_id"] = batch_id
    new_ids: list[str] = []
    if cfg.data.id_columns:
        row_ids = ingest.row_ids(rows, cfg.data.id_columns)
        fresh = [row_id not in ids for row_id in row_ids]
        new_ids = [row_id for row_id, keep in zip(row_ids, fresh, strict=True) if keep]
        resent = len(rows) - len(new_ids)
        if resent:
            # Keyed by the file anyway (even with no row left), so the file counts as taken.
            rows = rows[fresh]
            summary.resent[file.name] = resent
            summary.notes.append(
                f"{file.name}: {resent} row(s) already in bronze by {', '.join(cfg.data.id_columns)}; not landed again"
            )
    lake.append(BRONZE, rows, key=file.sha256)
    ids.update(new_ids)
    summary.accepted.append(file.name)
    if outcome.dropped:
        summary.dropped[file.name] = dict(outcome.dropped)
    summary.rows += len(rows)
    summary.notes.extend(f"{file.name}: {note}" for note in outcome.notes)


@land_task.on_rollback
def _rollback_bronze(txn: Transaction) -> None:
    if txn.get("keep_bronze", False):
        return  # a refused gate keeps the valid data it was given
    _restore_to_manifest(Lake(txn.get("lake_root"), txn.get("storage_options")), BRONZE)


@task(name="build-features", cache_policy=NO_CACHE)
def features_task(cfg: SelfhealConfig) -> int | None:
    """Append silver rows for every bronze batch not yet in silver; return silver's version."""
    lake = open_lake(cfg)
    if not lake.exists(BRONZE):
        return None
    schema = locked_schema(lake, cfg)
    assert schema is not None
    done: set[str] = set()
    if lake.exists(SILVER) and lake.read(SILVER).num_rows:
        done = set(lake.read(SILVER, columns=["_sha256"]).column("_sha256").to_pylist())
    bronze = lake.read(BRONZE).to_pandas()
    for sha, rows in bronze[~bronze["_sha256"].isin(done)].groupby("_sha256", sort=False):
        silver = features.to_silver(
            rows, schema, cfg.data.target, [*cfg.data.id_columns, *filter(None, [cfg.data.time_column])]
        )
        lake.append(SILVER, silver, key=f"silver:{sha}")
    return lake.version(SILVER) if lake.exists(SILVER) else None


@features_task.on_rollback
def _rollback_silver(txn: Transaction) -> None:
    _restore_to_manifest(Lake(txn.get("lake_root"), txn.get("storage_options")), SILVER)


@task(name="monitor-batches", cache_policy=NO_CACHE)
def monitor_batches_task(cfg: SelfhealConfig, registry: Registry, first_batch: int) -> BatchScoring:
    """Score this run's batches with the champion of now, log them, and judge them (before training)."""
    done, rows = log_landed_batches(open_lake(cfg), registry, cfg.data.target, first_batch, cfg.trainer.trusted_types)
    if rows is not None and done.champion is not None:
        signals = batch_pass(cfg, rows, done.champion)
        done = replace(done, signals=tuple(s.summary() for s in signals))
    _log().info("%s", done.summary())
    return done


@dataclass(frozen=True)
class ChangeWindow:
    """Train on the data from a change point on (the healer's change-aware retrain).

    Known when it names the first batch after the change, or the change's time (then the
    batches that landed at or after it). ``min_labeled_rows``: fewer labeled rows after
    the change than this and the run trains nothing (outcome ``waiting``).

    Example:
        >>> pipeline_flow("selfheal.yaml", change=ChangeWindow(since_batch=7, min_labeled_rows=200))
    """

    since_batch: int | None = None
    since_time: datetime | None = None
    min_labeled_rows: int = 0

    @property
    def known(self) -> bool:
        return self.since_batch is not None or self.since_time is not None

    def rows(self, silver: pd.DataFrame, window_batches: int | None) -> pd.DataFrame:
        """The training rows: from the change on when it is known, else the newest ``window_batches``."""
        if self.known:
            return train.since_change(silver, self.since_batch, self.since_time)
        return train.recent(silver, window_batches)

    def describe(self) -> str:
        if self.since_batch is not None:
            return f"batch {self.since_batch}"
        return f"batches landed since {self.since_time.isoformat()}" if self.since_time else "no change point"


@dataclass(frozen=True)
class Challenger:
    version: str
    run_id: str
    metrics: dict[str, float]
    resumed: bool


def _train_key(cfg: SelfhealConfig, silver_version: int, change: ChangeWindow | None = None) -> str:
    parts: list[Any] = [cfg.model_name, silver_version, cfg.config_hash, code_version()]
    if change is not None and change.known:  # unchanged keys for runs without a change point
        parts.append([change.since_batch, change.since_time.isoformat() if change.since_time else None])
    raw = json.dumps(parts)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _experiment_id(cfg: SelfhealConfig) -> str:
    """The project's experiment (created with artifacts under ``artifact_root``, not ./mlruns).

    Passed to ``start_run`` explicitly: setting MLflow's process-wide active
    experiment would leak into anything else in the process using another store.
    """
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    experiment = registry.call("find the experiment", lambda c: c.get_experiment_by_name(cfg.project))
    if experiment is not None:
        return str(experiment.experiment_id)
    location = Path(cfg.artifact_root).as_uri() if "://" not in cfg.artifact_root else cfg.artifact_root
    return str(
        registry.call(
            "create the experiment", lambda c: c.create_experiment(cfg.project, artifact_location=location), wait=True
        )
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: SelfhealConfig, silver_version: int, change: ChangeWindow | None = None) -> Challenger:
    """Fit on silver at ``silver_version``, log to MLflow with lineage, register as challenger.

    With a known ``change``, only the rows from the change point on are used (and their
    batch range is logged); else the newest ``trainer.window_batches``. A model already
    registered for the same inputs (train key) is reused, not refitted.
    """

    log = _log()
    change = change or ChangeWindow()
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    key = _train_key(cfg, silver_version, change)
    existing = registry.find_by_tag(TRAIN_KEY_TAG, key)
    if existing is not None and existing.run_id:
        run_id = existing.run_id
        metrics = registry.call(f"read run {run_id}", lambda c: c.get_run(run_id)).data.metrics
        log.info(
            "resume: version %s was already trained on silver v%d; not refitting", existing.version, silver_version
        )
        _remember(challenger_version=existing.version, challenger_run_id=existing.run_id)
        return Challenger(existing.version, existing.run_id, dict(metrics), resumed=True)
    lake = open_lake(cfg)
    schema = locked_schema(lake, cfg)
    assert schema is not None
    silver = change.rows(
        features.model_frame(lake.read(SILVER, version=silver_version), schema), cfg.trainer.window_batches
    )
    trained, split = train.fit(
        silver, schema, cfg.data.target, cfg.data.task, cfg.trainer, cfg.data.id_columns, cfg.data.time_column
    )
    lineage = {
        BRONZE_VERSION_TAG: str(lake.version(BRONZE)),
        SILVER_VERSION_TAG: str(silver_version),
        **_window_tags(cfg, silver, change),
        "selfheal.config_hash": cfg.config_hash,
        "selfheal.code_version": code_version(),
        TRAIN_KEY_TAG: key,
        "selfheal.holdout_rows": str(len(split.holdout)),
        "selfheal.train_rows": str(len(split.train)),
    }
    version, run_id = _log_and_register(cfg, trained, split, lineage, f"train-silver-v{silver_version}")
    for tag, value in {**lineage, **{f"metric.{k}": f"{v:.6f}" for k, v in trained.metrics.items()}}.items():
        registry.set_tag(version, tag, value)
    registry.set_alias(CHALLENGER, version)
    _remember(challenger_version=version, challenger_run_id=run_id)
    log.info("trained version %s on silver v%d: %s", version, silver_version, trained.metrics)
    return Challenger(version, run_id, trained.metrics, resumed=False)


def _log_and_register(
    cfg: SelfhealConfig, trained: train.TrainedModel, split: train.Split, lineage: dict[str, str], run_name: str
) -> tuple[str, str]:
    """Log the fit (parameters, metrics, lineage, the model) as one MLflow run and register it: (version, run id)."""
    with (
        mlflow_uris(cfg.tracking_uri),
        mlflow.start_run(experiment_id=_experiment_id(cfg), run_name=run_name) as run,
    ):
        mlflow.log_params({"estimator": type(trained.model[-1]).__name__, **trained.params, **_data_params(split)})
        mlflow.log_metrics({**trained.metrics, **per_batch_metrics(trained.per_batch)})
        mlflow.set_tags(lineage)
        info = log_sklearn_model(
            trained.model,
            split.train[trained.features].head(5),
            # The model imputes: a feature the training rows left empty takes null when served too.
            nullable=[c for c in trained.features if split.train[c].isna().any()],
            registered_model_name=cfg.model_name,
            extra_trusted=cfg.trainer.trusted_types,
        )
    return str(info.registered_model_version), run.info.run_id


def _window_tags(cfg: SelfhealConfig, silver: pd.DataFrame, change: ChangeWindow) -> dict[str, str]:
    """Which rows trained the model: the batch range, the change it follows, the monitor's reference window."""
    batches = train.batch_range(silver)
    window = silver["_batch_id"].nunique() if change.known else cfg.trainer.window_batches
    return {
        # The monitor's reference is the newest N batches of this silver version: from the change on, N of them.
        WINDOW_TAG: str(window or "all"),
        TRAIN_BATCHES_TAG: f"{batches[0]}-{batches[1]}" if batches else "",
        CHANGE_TAG: change.describe(),
        **({SINCE_BATCH_TAG: str(batches[0])} if change.known and batches else {}),
    }


def _data_params(split: train.Split) -> dict[str, Any]:
    """The training data's extent as run parameters: which batches, how many rows."""
    batches = train.batch_range(split.train)
    first, last = batches if batches else (None, None)
    return {"train_first_batch": first, "train_last_batch": last, "train_rows": len(split.train)}


@train_task.on_rollback
def _rollback_challenger(txn: Transaction) -> None:
    version = txn.get("challenger_version", None)
    if version is None:
        return
    registry = Registry(txn.get("tracking_uri"), txn.get("model_name"))
    rejection = txn.get("rejection", None)
    run_id = txn.get("challenger_run_id", None)
    if rejection and run_id:
        # The MLflow run stays as the record of why; the registry goes back to how it was.
        registry.call(
            f"tag run {run_id}", lambda c: c.set_tag(run_id, "selfheal.gate", f"rejected: {rejection}"), wait=True
        )
    registry.delete_alias(CHALLENGER)
    registry.delete_version(version)


def _holdout(
    cfg: SelfhealConfig, lake: Lake, silver_version: int, change: ChangeWindow | None
) -> tuple[pd.DataFrame, list[str]]:
    """The holdout a model trained on silver ``silver_version`` (from ``change`` on) was scored on, and its features."""
    schema = locked_schema(lake, cfg)
    assert schema is not None
    silver = (change or ChangeWindow()).rows(
        features.model_frame(lake.read(SILVER, version=silver_version), schema), cfg.trainer.window_batches
    )
    labeled = silver[silver[cfg.data.target].notna()].reset_index(drop=True)
    holdout = train.split_holdout(labeled, cfg.trainer, cfg.data.time_column).holdout.copy()
    if cfg.data.task != "regression":
        holdout[cfg.data.target] = holdout[cfg.data.target].astype("int64")
    return holdout, features.feature_columns(schema, cfg.data.target, cfg.data.id_columns)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: SelfhealConfig, challenger: Challenger, silver_version: int, change: ChangeWindow | None = None
) -> evaluate.GateDecision:
    """Score the champion on the challenger's holdout and apply the gate (the flow acts on the verdict)."""

    metric = cfg.gate_metric
    if metric not in challenger.metrics:
        # e.g. roc_auc on a holdout holding one class only: no evidence, so no promotion.
        reason = f"{metric} could not be computed on this holdout (have {sorted(challenger.metrics)})"
        return evaluate.GateDecision(metric, float("nan"), None, cfg.gate.minimum, False, reason)
    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    champion = registry.by_alias(CHAMPION)
    champion_score: float | None = None
    if champion is not None and champion.version != challenger.version:
        holdout, feats = _holdout(cfg, open_lake(cfg), silver_version, change)
        try:
            model = load_version(registry, champion, cfg.trainer.trusted_types)
        except ModelRefused as exc:
            # Nothing of it ran; the server serves another version. The gate's minimum still holds.
            _log().warning("@%s is not compared: %s", CHAMPION, exc)
        else:
            champion_score = train.score(model, holdout, feats, cfg.data.target, cfg.data.task).get(metric)
    return evaluate.check(metric, challenger.metrics[metric], champion_score, cfg.gate.minimum, cfg.gate.tolerance)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(cfg: SelfhealConfig, version: str) -> str | None:
    """champion <- challenger, previous <- old champion. Returns the old champion's version.

    With ``promote.target`` shadow or canary (and a champion to compare with), the
    version starts a release as challenger instead (``flows.release.controller``); the champion stays.
    """
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    previous = registry.by_alias(PREVIOUS)
    if cfg.promote.target != "direct" and registry.by_alias(CHAMPION) is not None:
        state = start_release(cfg, version, cfg.promote.target, again=False)
        _remember(release_started=state.release_id)
        return state.champion
    old = registry.promote(version)
    _remember(old_champion=old.version if old else None, old_previous=previous.version if previous else None)
    return old.version if old else None


@task(name="freeze-golden-set", cache_policy=NO_CACHE)
def freeze_golden_task(cfg: SelfhealConfig, version: str, silver_version: int, change: ChangeWindow | None) -> int:
    """Freeze the version about to be promoted's golden set (``flows.pipeline.golden``): rows frozen, 0 if none.

    Best effort: the promotion stands when it fails (the healer's probe then has no set for
    the version and says so); a version the server cannot load is the refusal probe's business.
    """
    if not cfg.golden.enabled:
        return 0
    lake = open_lake(cfg)
    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    try:
        holdout, _ = _holdout(cfg, lake, silver_version, change)
        sample = golden.stratified_sample(holdout, cfg.data.target, cfg.data.task, cfg.golden.rows, cfg.trainer.seed)
        return golden.freeze(cfg, lake, registry, version, sample, f"holdout of silver v{silver_version}")
    except (SelfhealError, OSError, ValueError, KeyError) as exc:
        _log().warning("no golden set for v%s: %s", version, exc)
        return 0


@promote_task.on_rollback
def _rollback_promotion(txn: Transaction) -> None:
    registry = Registry(txn.get("tracking_uri"), txn.get("model_name"))
    if txn.get("release_started", None) is not None:
        state = read_state(registry)
        if state is not None and state.release_id == txn.get("release_started") and state.routing:
            write_state(registry, state.evolve(status="aborted", share=0.0, detail="the pipeline run rolled back"))
        return
    # The old champion is promoted again (its tag says when), or the undone promotion loses its tag: the
    # version promoted last is then the champion again, as flows.gitops reads it.
    old_champion, promoted = txn.get("old_champion", None), txn.get("challenger_version", None)
    if old_champion is not None:
        registry.set_tag(old_champion, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
    elif promoted is not None:
        registry.delete_tag(promoted, PROMOTED_AT_TAG)
    for alias, version in ((CHAMPION, old_champion), (PREVIOUS, txn.get("old_previous", None))):
        if version is not None:
            registry.set_alias(alias, version)
        else:
            registry.delete_alias(alias)


# -- the flow --------------------------------------------------------------------------
def _new_files(cfg: SelfhealConfig) -> list[ingest.LandingFile]:
    """The landing files not yet ingested (the fallback source's when the primary stays unreachable)."""
    log = _log()
    try:
        sources = list_landing_task(cfg.landing.path, cfg.landing.format)
    except ingest.LandingUnreachable as exc:
        if not cfg.landing.fallback:
            raise
        log.warning(
            "primary landing zone unreachable after retries (%s); reading fallback %s", exc, cfg.landing.fallback
        )
        sources = list_landing_task(cfg.landing.fallback, cfg.landing.format)
    return read_new_files_task(cfg, sources)


def _run_id() -> str:
    """The flow run's id inside a Prefect flow run; a local, timestamped one outside."""
    try:
        context = get_run_context()
    except MissingContextError:  # called plainly (tests, benchmarks)
        context = None
    if isinstance(context, FlowRunContext) and context.flow_run is not None:
        return str(context.flow_run.id)
    return datetime.now(UTC).strftime("local-%Y%m%dT%H%M%S%f")


@flow(name="selfheal-pipeline", log_prints=False)
def pipeline_flow(
    config_path: str | None = None, window_batches: int | None = None, change: ChangeWindow | None = None
) -> PipelineResult:
    """One pipeline run over whatever landed since the last one.

    Args:
        config_path: the selfheal.yaml to use (default: $SELFHEAL_CONFIG or ./selfheal.yaml).
        window_batches: train on the newest N batches only (the healer's retrain remedy);
            None keeps ``trainer.window_batches`` from the config.
        change: train on the data from this change point on (the healer's change-aware
            retrain); when it is known, ``window_batches`` is not used.
    """
    cfg = load_config(config_path)
    if window_batches is not None:
        cfg.trainer.window_batches = window_batches
    log = _log()
    Path(cfg.home).mkdir(parents=True, exist_ok=True)
    lake = open_lake(cfg)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    run_id = _run_id()
    last = lake.last_manifest()
    files = _new_files(cfg)
    bronze_before = lake.version(BRONZE) if lake.exists(BRONZE) else None
    if not files and last is not None and last.meta.get("outcome") == "rejected":
        if last.stages.get(BRONZE) == bronze_before:
            msg = "no new landing files since the gate refused the last model; nothing to do"
            log.info(msg)
            return PipelineResult("nothing-new", msg, bronze_before, last.stages.get(SILVER))
    result = PipelineResult("promoted", "")
    try:
        _run_stages(cfg, lake, registry, files, result, change or _champion_change(registry))
    except PromotionRejected as exc:
        result.outcome, result.message = "rejected", str(exc)
        log.warning("gate refused the challenger; champion, silver and registry left as they were: %s", exc)
    return _finish(cfg, lake, run_id, result)


def _trained_on_the_same_rows(
    cfg: SelfhealConfig, lake: Lake, tags: Any, silver_version: int, change: ChangeWindow
) -> bool:
    """The champion was trained (e.g. by a scheduled run's window) on exactly the rows from the change on."""
    if not change.known or tags.get(SILVER_VERSION_TAG) != str(silver_version):
        return False
    if tags.get("selfheal.config_hash") != cfg.config_hash or tags.get("selfheal.code_version") != code_version():
        return False
    silver = lake.read(SILVER, version=silver_version, columns=["_batch_id", "_ingested_at"]).to_pandas()
    batches = train.batch_range(change.rows(silver, None))
    return batches is not None and tags.get(TRAIN_BATCHES_TAG) == f"{batches[0]}-{batches[1]}"


def _champion_change(registry: Registry) -> ChangeWindow:
    """A run without a change point of its own keeps to the champion's: a model that was retrained
    from a change on is not replaced by one that learns the world before it again."""
    champion = registry.by_alias(CHAMPION)
    since = champion.tags.get(SINCE_BATCH_TAG, "") if champion else ""
    return ChangeWindow(since_batch=int(since)) if since.isdigit() else ChangeWindow()


def _next_batch_id(lake: Lake) -> int:
    if not lake.exists(BRONZE):
        return 0
    ids = lake.read(BRONZE, columns=["_batch_id"]).column("_batch_id")
    return int(pc.max(ids).as_py() or 0) + 1 if len(ids) else 0


def labeled_shortfall(cfg: SelfhealConfig, lake: Lake, change: ChangeWindow, silver_version: int | None = None) -> str:
    """Why a run must wait for more labeled rows after the change point ("" when it need not)."""
    if not change.known or change.min_labeled_rows <= 0:
        return ""
    labeled = 0
    if lake.exists(SILVER):
        silver = lake.read(SILVER, version=silver_version, columns=[cfg.data.target, "_batch_id", "_ingested_at"])
        labeled = int(change.rows(silver.to_pandas(), None)[cfg.data.target].notna().sum())
    if labeled >= change.min_labeled_rows:
        return ""
    return (
        f"waiting for labeled rows after the change point ({change.describe()}): "
        f"{labeled} of the {change.min_labeled_rows} needed to retrain (healing.retrain_min_rows)"
    )


def _run_stages(
    cfg: SelfhealConfig,
    lake: Lake,
    registry: Registry,
    files: list[ingest.LandingFile],
    result: PipelineResult,
    change: ChangeWindow,
) -> None:
    """All writing stages inside one transaction (rolled back together on failure)."""
    with transaction() as txn:
        txn.set("lake_root", lake.root)
        txn.set("storage_options", lake.storage_options)
        txn.set("tracking_uri", cfg.tracking_uri)
        txn.set("model_name", cfg.model_name)
        first_batch = _next_batch_id(lake)
        result.landing = land_task(cfg, files, first_batch) if files else LandingSummary()
        silver_version = features_task(cfg)
        if result.landing.accepted and cfg.landing.monitor:
            result.monitored = monitor_batches_task(cfg, registry, first_batch)
        result.bronze_version = lake.version(BRONZE) if lake.exists(BRONZE) else None
        result.silver_version = silver_version
        if silver_version is None:
            result.outcome, result.message = "nothing-new", "no valid data has landed yet; nothing to train on"
            return
        waiting = labeled_shortfall(cfg, lake, change, silver_version)
        if waiting:
            result.outcome, result.message = "waiting", waiting
            return
        champion = registry.by_alias(CHAMPION)
        if champion is not None and (
            champion.tags.get(TRAIN_KEY_TAG) == _train_key(cfg, silver_version, change)
            or _trained_on_the_same_rows(cfg, lake, champion.tags, silver_version, change)
        ):
            result.outcome = "up-to-date"
            result.message = f"no new data: champion v{champion.version} is already trained on silver v{silver_version}"
            result.champion = champion.version
            return
        challenger = train_task(cfg, silver_version, change)
        result.resumed, result.metrics = challenger.resumed, challenger.metrics
        decision = evaluate_task(cfg, challenger, silver_version, change)
        if not decision.passed:
            # Raised here, not in the task, so the rollback hooks can see that bronze stays.
            txn.set("keep_bronze", True)
            txn.set("rejection", f"{decision.metric}={decision.challenger:.4f} < {decision.required:.4f}")
            decision.raise_if_rejected()
        # Frozen before the alias moves: a champion always has its golden set, taken from the artifact
        # that passed the gate (after it, a file changed in between was frozen as the truth: CI, 7694f18).
        freeze_golden_task(cfg, challenger.version, silver_version, change)
        old = promote_task(cfg, challenger.version)
        if cfg.promote.target != "direct" and old is not None:
            result.outcome, result.champion = "released", old
            result.message = f"v{challenger.version} passed the gate; {cfg.promote.target} release against v{old}"
            return
        result.champion = challenger.version
        result.message = f"v{challenger.version} promoted: {decision.metric}={decision.challenger:.4f}" + (
            f" (champion had {decision.champion:.4f} on the same holdout)" if decision.champion is not None else ""
        )


def landing_meta(landing: LandingSummary) -> dict[str, Any]:
    """What a run manifest keeps of the landing (``selfheal pipeline status`` shows it)."""
    return {
        "accepted": landing.accepted,
        "quarantined": [name for name, _ in landing.quarantined],
        "resent_rows": landing.resent,
        "dropped_rows": landing.dropped,
    }


def _finish(cfg: SelfhealConfig, lake: Lake, run_id: str, result: PipelineResult) -> PipelineResult:
    stages = {t: lake.version(t) for t in STAGE_TABLES if lake.exists(t)}
    meta: dict[str, Any] = {"outcome": result.outcome, "champion": result.champion, "metrics": result.metrics}
    if result.landing.quarantined or result.landing.resent or result.landing.dropped:
        meta["landing"] = landing_meta(result.landing)
    if stages:
        lake.write_manifest(run_id, stages, meta=meta)
    if result.outcome == "promoted":
        notify_server(cfg)
    _log().info("%s: %s", result.outcome, result.message)
    return result
