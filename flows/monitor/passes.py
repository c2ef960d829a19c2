"""One monitor pass as plain calls: read what is new, run the detectors, record, raise signals.

``monitor_pass`` is what ``selfheal monitor --once`` (without a Prefect API) and every
healer tick run; ``batch_pass`` judges landed batches for the pipeline. The Prefect
flow ``flows.monitor.flow.monitor_flow`` runs the same steps as tasks. Nothing here
imports Prefect, so a one-shot pass pays neither its imports nor its server (the
tables read and written are listed in ``flows.monitor.flow``).

Example:
    >>> signals = monitor_pass(load_config("selfheal.yaml"))
    >>> [s.kind for s in signals]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from checkpoints import Lake
from checkpoints.exceptions import RegistryUnavailable, ServingUnavailable
from checkpoints.golden import PROBE_REQUEST_PREFIX
from checkpoints.scan import read_labeled, utc
from flows.events import emit
from flows.monitor import batch, inbox
from flows.monitor.detectors import MonitorThresholds, ReferenceProfile
from flows.monitor.detectors.performance import Task, per_batch_baseline
from flows.monitor.scrape import ServingSnapshot, scrape
from flows.monitor.signals import Signal
from flows.monitor.state import MonitorState, commit_run, load_state
from flows.monitor.window import PREDICTION_COLUMNS, MonitorWindow, assess
from flows.registry import STORE_ANSWER_SECONDS, run_metrics
from serving.inference_log import FEEDBACK_TABLE as FEEDBACK
from serving.inference_log import INFERENCE_TABLE as INFERENCE_LOG
from serving.registry import CHAMPION, SILVER_VERSION_TAG, WINDOW_TAG, ModelNotFound, ModelRegistry

if TYPE_CHECKING:
    from flows.config import SelfhealConfig

logger = logging.getLogger(__name__)

SILVER = "silver"
PREDICTION_REFERENCE = "prediction_reference"
PREDICTION_REFERENCE_RESETS = "prediction_reference_resets"
INITIAL_LOOKBACK = timedelta(hours=1)
_METRIC_NAMES = ("roc_auc", "accuracy", "f1_macro", "f1", "r2", "rmse", "mae")
_METRIC_PREFIXES = ("holdout_", "holdout.", "val_", "validation_", "eval_", "test_", "metrics.", "selfheal.metric.")


@dataclass(frozen=True)
class Champion:
    """What the registry says about the model being served.

    Attributes:
        version: the champion's registry version (None: no registry or no champion).
        silver_version: silver table version it was trained on (its ``selfheal.silver_version`` tag).
        metrics: its validation metrics by plain name (``roc_auc``, ``rmse``, ...).
    """

    version: str | None = None
    silver_version: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    window_batches: int | None = None
    """Trained on the newest N batches of silver only (its ``selfheal.window_batches`` tag)."""
    spread: Mapping[str, float] = field(default_factory=dict)
    """Per metric, the standard deviation of its quality between holdout batches."""


def baseline_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """Plain metric names from MLflow keys: holdout/validation values win over bare ones; train values never count.

    Example:
        >>> baseline_metrics({"train_roc_auc": 0.99, "holdout_roc_auc": 0.91, "rmse": 3.0})
        {'roc_auc': 0.91, 'rmse': 3.0}
    """
    found: dict[str, tuple[int, float]] = {}
    for key, value in raw.items():
        name, rank = key.lower(), 1
        for i, prefix in enumerate(_METRIC_PREFIXES):
            if name.startswith(prefix):
                name, rank = name.removeprefix(prefix), 10 - i
                break
        if name not in _METRIC_NAMES:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if name not in found or rank > found[name][0]:
            found[name] = (rank, number)
    return {k: v for k, (_, v) in found.items()}


def _int_tag(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def champion_context(model_name: str | None, tracking_uri: str | None) -> Champion:
    """The champion's version, silver version and validation metrics.

    An unreachable registry or a missing champion gives ``Champion()``: the monitor keeps watching.
    """
    if not model_name:
        return Champion()
    # One bounded try: a locked store blocks each call for its busy timeout, and the monitor must not stall.
    registry = ModelRegistry(model_name, tracking_uri=tracking_uri, attempts=1, read_seconds=STORE_ANSWER_SECONDS)
    try:
        champion = registry.by_alias(CHAMPION)
        if champion is None:
            return Champion()
        run_id = champion.run_id
        raw: dict[str, Any] = {}
        if run_id:
            try:
                raw.update(run_metrics(registry, run_id))
            except ModelNotFound:  # the champion's run was deleted: its tags still carry the baseline
                logger.warning("the champion's run %s is gone; baseline from its tags only", run_id)
    except RegistryUnavailable as exc:  # the monitor must keep watching when the registry is away
        logger.warning("model registry unavailable (%s); no champion baseline this run", exc)
        return Champion()
    tags = dict(champion.tags)
    raw.update(tags)
    # A batch is judged against the champion's quality per holdout batch, where it was measured.
    means, spread = per_batch_baseline(raw)
    return Champion(
        champion.version,
        _int_tag(tags.get(SILVER_VERSION_TAG)),
        baseline_metrics(raw) | means,
        _int_tag(tags.get(WINDOW_TAG)),
        spread,
    )


# -- reading ---------------------------------------------------------------------
_REFERENCE_CACHE: dict[tuple[str, int, str], ReferenceProfile] = {}


def reference_profile(
    lake: Lake,
    version: int | None,
    thresholds: MonitorThresholds,
    target: str | None,
    served: list[str] | None = None,
    window_batches: int | None = None,
) -> ReferenceProfile | None:
    """Silver's features at ``version`` (None: newest), profiled once per process.

    Features are silver's columns except the target and lineage columns (``_*``),
    limited to ``served`` (the features the server logs: ids and timestamps kept in
    silver for joins are never model inputs). With ``window_batches`` only the
    newest N batches count: the data a model trained on a recent window learned from.
    """
    if not lake.exists(SILVER):
        return None
    resolved = version if version is not None else lake.version(SILVER)
    key = (lake.uri(SILVER), resolved, f"{target}:{served}:{window_batches}:{thresholds.drift.model_dump_json()}")
    if key not in _REFERENCE_CACHE:
        silver = lake.scan(SILVER, version=resolved)
        assert silver is not None
        if window_batches and "_batch_id" in silver.column_names:
            newest = sorted(set(silver.column("_batch_id").to_pylist()))[-window_batches:]
            silver = silver.filter(
                pc.is_in(silver.column("_batch_id"), pa.array(newest, silver.schema.field("_batch_id").type))
            )
        columns = [
            c for c in silver.column_names if not c.startswith("_") and c != target and (served is None or c in served)
        ]
        _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[key] = ReferenceProfile.from_data(silver, thresholds.drift, columns)
    return _REFERENCE_CACHE[key]


def prediction_reference(
    lake: Lake, drift_rows: pa.Table | None, thresholds: MonitorThresholds
) -> ReferenceProfile | None:
    """The prediction reference of the newest version in ``drift_rows`` (the champion's rows), made on first sight.

    The first drift window a version serves becomes its reference (written once,
    keyed by version); from the next window on its predictions are compared with it.
    A version whose reference was forgotten (``forget_prediction_reference``) makes it
    again from its rows served after that only: the window may still hold the rows
    that made the reference wrong.
    """
    if drift_rows is None or "_model_version" not in drift_rows.column_names or drift_rows.num_rows == 0:
        return None
    version = str(drift_rows.column("_model_version")[-1].as_py())
    cols = [c for c in PREDICTION_COLUMNS if c in drift_rows.column_names]
    stored = lake.scan(PREDICTION_REFERENCE, pc.field("model_version") == version)
    if stored is None or stored.num_rows == 0:
        own = drift_rows.filter(pc.equal(drift_rows.column("_model_version"), version))
        forgotten = _forgotten_at(lake, version)
        if forgotten is not None:
            own = own.filter(pc.greater(own.column("_ts"), utc(forgotten)))
        if own.num_rows < thresholds.min_window_rows:
            return None  # the next window makes it
        own = own.sort_by("_ts")
        first = own.slice(0, thresholds.prediction_reference_rows).select(cols)
        first = first.append_column("model_version", pa.array([version] * first.num_rows, pa.string()))
        # Keyed by its first row too: a reference forgotten (forget_prediction_reference) is made again.
        since = own.column("_ts")[0].as_py().isoformat()
        lake.append(PREDICTION_REFERENCE, first, key=f"prediction-reference:{version}:{since}")
        return None
    return ReferenceProfile.from_data(stored, thresholds.prediction_drift, columns=cols)


def forget_prediction_reference(lake: Lake, version: str, at: datetime | None = None) -> bool:
    """Drop ``version``'s prediction reference: its rows served after ``at`` (default now) make a new one.

    For a version whose served predictions were not its registered model's (a swapped
    artifact, ``model_mismatch``): a reference drawn from them would make the right model,
    once it serves again, read as prediction drift (and any input drift as felt). The
    time is kept (table ``prediction_reference_resets``): the monitor's next window may
    still hold the swapped model's rows. Returns whether there was a reference to drop.
    """
    at = (at or datetime.now(UTC)).astimezone(UTC)
    mark = pa.table(
        {"model_version": pa.array([version], pa.string()), "at": pa.array([at], pa.timestamp("us", tz="UTC"))}
    )
    lake.append(PREDICTION_REFERENCE_RESETS, mark, key=f"prediction-reference-reset:{version}:{at.isoformat()}")
    if not lake.exists(PREDICTION_REFERENCE):
        return False
    stored = lake.read(PREDICTION_REFERENCE)
    kept = stored.filter(pc.not_equal(stored.column("model_version"), version))
    if kept.num_rows == stored.num_rows:
        return False
    lake.overwrite(PREDICTION_REFERENCE, kept)
    return True


def _forgotten_at(lake: Lake, version: str) -> datetime | None:
    """When ``version``'s prediction reference was last forgotten (None: never)."""
    marks = lake.scan(PREDICTION_REFERENCE_RESETS, pc.field("model_version") == version)
    if marks is None or marks.num_rows == 0:
        return None
    latest: datetime = pc.max(marks.column("at")).as_py()
    return latest


def champion_rows(rows: pa.Table, version: str | None, min_rows: int) -> pa.Table | None:
    """The rows of ``rows`` the champion answered (None when fewer than ``min_rows``).

    Not a canary challenger's (``_variant``: those are the release analysis's) and, when
    the registry names the champion, of its ``version`` only (not a fallback's or a version
    swapped out during the window): its predictions are what its prediction reference
    describes. Mixed in, a worse canary's 20% of scores read as prediction drift of the
    champion (a false data_drift incident in the chaos suite's release-canary-worse).
    """
    if "_variant" in rows.column_names:
        rows = rows.filter(pc.not_equal(pc.fill_null(rows.column("_variant"), "champion"), "challenger"))
    if version is not None and "_model_version" in rows.column_names:
        rows = rows.filter(pc.equal(rows.column("_model_version"), version))
    return rows if rows.num_rows >= min_rows else None


def _labels_after(labeled: pa.Table | None, start: datetime) -> pa.Table | None:
    if labeled is None:
        return None
    later = labeled.filter(pc.greater(labeled.column("ts"), utc(start)))
    return later if later.num_rows else None


def _labels(
    lake: Lake, state: MonitorState, thresholds: MonitorThresholds, champion: Champion, start: datetime, end: datetime
) -> tuple[pa.Table | None, datetime, pa.Table | None]:
    """The new labels (concept drift), and the performance window's start and labels (when enough)."""
    feedback_start = state.feedback_watermark or start
    perf_start = state.performance_watermark or start
    # One look-up of the labeled predictions serves both windows (it reads every log file).
    both = read_labeled(lake, min(feedback_start, perf_start), end, feedback=FEEDBACK, predictions=INFERENCE_LOG)
    all_labels = _labels_after(both, perf_start)
    if all_labels is not None and champion.version is not None and "_model_version" in all_labels.column_names:
        # Quality is the champion's: labels of predictions an older version made right
        # before a swap must not count against (or for) the new one.
        all_labels = all_labels.filter(pc.equal(all_labels.column("_model_version"), champion.version))
    enough = all_labels is not None and all_labels.num_rows >= thresholds.performance.min_labels
    return _labels_after(both, feedback_start), perf_start, all_labels if enough else None


def _last_commits(lake: Lake, thresholds: MonitorThresholds) -> dict[str, datetime | None]:
    """When each table with a freshness limit was last written (None: never)."""
    found = {t: lake.last_commit(t) for t in thresholds.freshness_seconds}
    if INFERENCE_LOG in found and found[INFERENCE_LOG] is None and lake.exists(batch.BATCH_LOG):
        # Scored in batch only, no server has ever logged: there is no live feed to go stale.
        del found[INFERENCE_LOG]
    return found


def _scrape(serving_url: str | None, timeout: float) -> tuple[ServingSnapshot | None, str | None]:
    """The server's ``/metrics`` snapshot, or why there is none."""
    if not serving_url:
        return None, None
    try:
        return scrape(serving_url, timeout), None
    except ServingUnavailable as exc:
        return None, str(exc)


def _without_golden_probes(rows: pa.Table | None) -> pa.Table | None:
    """``rows`` without the healer's golden replays (holdout records every minute are not live traffic)."""
    if rows is None or "_request_id" not in rows.column_names:
        return rows
    probe = pc.fill_null(pc.starts_with(rows.column("_request_id"), PROBE_REQUEST_PREFIX), False)
    return rows.filter(pc.invert(probe))


def read_window(
    lake: Lake,
    state: MonitorState,
    thresholds: MonitorThresholds,
    champion: Champion,
    serving_url: str | None,
    ml_task: Task,
    now: datetime,
    target: str | None = None,
) -> MonitorWindow:
    """Everything new since the state's watermarks, as a ``MonitorWindow``."""
    end = now - timedelta(seconds=thresholds.ingest_lag_seconds)
    start = state.inference_watermark or end - INITIAL_LOOKBACK
    drift_start = state.drift_watermark or start
    rows = _without_golden_probes(lake.window(INFERENCE_LOG, "_ts", min(start, drift_start), end))
    rows = rows.sort_by("_ts") if rows is not None else pa.table({"_ts": pa.array([], pa.timestamp("us", tz="UTC"))})
    drift_rows = rows.filter(pc.greater(rows.column("_ts"), utc(drift_start)))
    enough = drift_rows.num_rows >= thresholds.min_window_rows
    predictions = champion_rows(drift_rows, champion.version, thresholds.min_window_rows) if enough else None
    labeled, perf_start, performance_rows = _labels(lake, state, thresholds, champion, start, end)
    served = [c for c in rows.column_names if not c.startswith("_")]
    serving, serving_error = _scrape(serving_url, thresholds.scrape_timeout_seconds)
    return MonitorWindow(
        start=start,
        end=end,
        now=now,
        inference=rows.filter(pc.greater(rows.column("_ts"), utc(start))),
        drift_start=drift_start,
        drift_rows=drift_rows if enough else None,
        labeled=labeled,
        performance_start=perf_start,
        performance_rows=performance_rows,
        serving=serving,
        serving_error=serving_error,
        last_commits=_last_commits(lake, thresholds),
        reference=reference_profile(lake, champion.silver_version, thresholds, target, served, champion.window_batches)
        if served and (enough or performance_rows is not None or labeled is not None)
        else None,
        prediction_rows=predictions,
        prediction_reference=prediction_reference(lake, predictions, thresholds),
        baseline_metrics=dict(champion.metrics),
        baseline_spread=dict(champion.spread),
        task=ml_task,
    )


def monitor_pass(cfg: SelfhealConfig, now: datetime | None = None) -> list[Signal]:
    """``monitor_flow``'s work for ``cfg`` as plain calls: what the healer runs every tick.

    The same steps, the same commit and the same ``selfheal.signal.*`` events, without
    a flow run, five task runs and an artifact per pass: on a busy two-core machine that
    bookkeeping cost more than the pass itself (1.2-5 s against 0.4-1.1 s measured), and
    the healer ticks every second. The ``selfheal-monitor`` deployment keeps the flow.
    """
    limits = MonitorThresholds.from_mapping(cfg.thresholds)
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    state = load_state(lake)
    champion = champion_context(cfg.model_name, cfg.tracking_uri)
    at = now or datetime.now(UTC)
    window = read_window(lake, state, limits, champion, cfg.serving.url, cfg.data.task, at, cfg.data.target)
    result = assess(window, state, limits)
    committed = commit_run(lake, result.state, result.rows)
    for signal in result.signals:
        logger.warning("signal: %s", signal.summary())
        emit_signal(signal)
    logger.debug("monitor run %d: %d signal(s), committed=%s", result.state.seq, len(result.signals), committed)
    return result.signals


def batch_pass(cfg: SelfhealConfig, rows: pa.Table, scored_by: str, now: datetime | None = None) -> list[Signal]:
    """Judge landed batch rows (``batch_log``) against the champion that scored them; return the signals.

    Run by the pipeline right after it scored the batches and before it trains on
    them, so the reference and the baseline are those of the model that met the batch
    (a model trained on the batch would see no drift in it). A batch is one complete
    piece of evidence: it is judged on its own, with a fresh state (no watermarks
    move, no streak carries over), so drift, prediction drift and, when it is
    labeled, performance are tested at once. The signals are sent as events and
    posted to the signal inbox (``flows.monitor.inbox``) for the healer.
    """
    limits = MonitorThresholds.from_mapping(cfg.thresholds)
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    champion = champion_context(cfg.model_name, cfg.tracking_uri)
    if champion.version != scored_by:
        return []  # promoted since it was scored: the pipeline runs this before training, so this is a race
    at = now or datetime.now(UTC)
    labels = batch.batch_labels(rows)
    served = [c for c in rows.column_names if not c.startswith("_")]
    window = MonitorWindow.of_batch(
        rows,
        labels,
        at,
        reference_profile(lake, champion.silver_version, limits, cfg.data.target, served, champion.window_batches),
        champion.metrics,
        champion.spread,
        cfg.data.task,
    )
    # A batch that moved is where the change starts: the healer's retrain trains from it on.
    first = int(pc.min(rows.column("_batch_id")).as_py()) if "_batch_id" in rows.column_names else None
    change_point = {"batch": first, "at": at.isoformat()}
    signals = [
        replace(s, source="batch", evidence={**s.evidence, "change_point": change_point})
        for s in assess(window, MonitorState(), limits).signals
    ]
    for signal in signals:
        logger.warning("batch signal: %s", signal.summary())
        emit_signal(signal)
    inbox.post(lake, signals, source="pipeline", now=at)
    return signals


def emit_signal(signal: Signal) -> None:
    """A ``selfheal.signal.<kind>`` Prefect event: what the healer deployment's trigger matches."""
    name = f"selfheal.signal.{signal.kind.value}"
    emit(name, name, signal.to_dict(), labels={"selfheal.severity": signal.severity.value})
