"""Where a drift began, and how good the model was before it, after it and after the repair.

A drift incident records its change point: the time (the start of the window of data
that raised the alarm, or what the signal names) and, when known, the first batch after
the change: named by the signal (a landed batch's own check), else found where the
pre-drift model's quality on each labeled batch fell and stayed down. The retrain trains
from there on (``flows.pipeline.flow.ChangeWindow``); the incident resolves only when
the champion's quality on labels after the repair is back within
``healing.recovery_tolerance`` of the pre-drift level (``Recovery``).

Example:
    >>> change = locate(ctx, from_signals(diagnosis.signals), version="3")
    >>> change.to_evidence()
    {'batch': 7, 'at': '2026-01-01T00:00:00+00:00', 'how': "v3's roc_auc fell from batch 7 on"}
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.compute as pc

from checkpoints.metrics import METRICS_TABLE
from checkpoints.scan import utc
from flows.config import DEFAULT_ESTIMATORS, SelfhealConfig
from flows.metrics import lower_is_better
from flows.monitor.signals import Signal
from flows.pipeline.stages import features
from flows.pipeline.tables import BRONZE, SILVER, locked_schema
from flows.registry import Registry
from serving.registry import PROMOTED_AT_TAG, SILVER_VERSION_TAG

if TYPE_CHECKING:
    from flows.healer.remedies import HealContext

logger = logging.getLogger(__name__)

#: The evidence key a signal may carry to name its change point: {"batch": int, "at": ISO time}.
CHANGE_POINT = "change_point"
#: The incident's evidence key for the champion that served when the drift began.
PRE_DRIFT_VERSION = "pre_drift_version"
#: Live windows whose median is the pre-drift level.
_PRE_DRIFT_WINDOWS = 10


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class ChangePoint:
    """When (and from which batch) the data changed; unknown parts are None."""

    batch: int | None = None
    at: datetime | None = None
    how: str = ""

    @property
    def known(self) -> bool:
        return self.batch is not None or self.at is not None

    def to_evidence(self) -> dict[str, Any]:
        return {"batch": self.batch, "at": self.at.isoformat() if self.at else None, "how": self.how}

    @classmethod
    def from_evidence(cls, data: Mapping[str, Any] | None) -> ChangePoint:
        if not data:
            return cls()
        at = data.get("at")
        batch = data.get("batch")
        when = _aware(datetime.fromisoformat(at)) if at else None
        return cls(None if batch is None else int(batch), when, data.get("how", ""))


def from_signals(signals: Iterable[Signal]) -> ChangePoint:
    """The earliest change point the signals name, else the start of the earliest window that raised one."""
    named = [s.evidence[CHANGE_POINT] for s in signals if isinstance(s.evidence.get(CHANGE_POINT), Mapping)]
    batches = [int(c["batch"]) for c in named if c.get("batch") is not None]
    times = [_aware(datetime.fromisoformat(c["at"])) for c in named if c.get("at")]
    times = times or [s.window.start for s in signals]
    if batches:
        return ChangePoint(min(batches), min(times, default=None), f"batch {min(batches)} named by the signal")
    return ChangePoint(None, min(times, default=None), "start of the window that raised the alarm" if times else "")


# -- quality of a model version on labeled batches ---------------------------------------
@dataclass(frozen=True)
class Measure:
    """One quality figure and where it was measured."""

    value: float
    source: str

    def to_evidence(self) -> dict[str, Any]:
        return {"value": round(self.value, 6), "source": self.source}


def _labeled_silver(ctx: HealContext) -> pd.DataFrame:
    target = ctx.cfg.data.target
    if not ctx.lake.exists(SILVER):
        return pd.DataFrame()
    schema = locked_schema(ctx.lake, ctx.cfg) or {}
    frame = features.model_frame(ctx.lake.read(SILVER), schema)  # a bool feature with a null stays boolean
    return frame[frame[target].notna()].reset_index(drop=True) if target in frame else pd.DataFrame()


def _score(ctx: HealContext, model: Any, rows: pd.DataFrame) -> float | None:
    cfg = ctx.cfg
    schema = locked_schema(ctx.lake, cfg)
    if rows.empty or schema is None:
        return None
    rows = rows.copy()
    if cfg.data.task != "regression":
        rows[cfg.data.target] = rows[cfg.data.target].astype("int64")
    from flows.pipeline.stages import train  # sklearn: only when a model is scored

    feats = features.feature_columns(schema, cfg.data.target, cfg.data.id_columns)
    value = train.score(model, rows, feats, cfg.data.target, cfg.data.task).get(cfg.gate_metric)
    return None if value is None else float(value)


def _model(ctx: HealContext, version: str) -> tuple[Any, Mapping[str, str]] | None:
    """Version ``version``'s model and its tags as they are now (None: unknown, or it cannot be loaded)."""
    cfg = ctx.cfg
    record = ctx.registry.by_version(version)
    if record is None:
        return None
    # Tags are read fresh: a version promoted again (a rollback) has a new promotion time.
    model = _load(cfg.tracking_uri, cfg.model_name, cfg.artifact_root, version, tuple(cfg.trainer.trusted_types))
    return (model, dict(record.tags)) if model is not None else None


@functools.lru_cache(maxsize=4)
def _load(tracking_uri: str, model_name: str, artifact_root: str, version: str, trusted: tuple[str, ...]) -> Any:
    """Loaded once per process: a version's artifact never changes, and the healer asks on several ticks."""
    from serving.modelio import load_version  # MLflow's model format: only when a model is loaded

    registry = Registry(tracking_uri, model_name, artifact_root=artifact_root)
    record = registry.by_version(version)
    return None if record is None else load_version(registry, record, trusted)


def warm_up(cfg: SelfhealConfig) -> None:
    """Import what loading a model imports on first use (skops, the estimator's module).

    Locating a change loads the pre-drift model when a drift incident opens: on a busy
    two-core machine the first load took 6-20 s, mostly these imports, between detecting
    the drift and starting the repair. Paid once at the healer's start instead.
    """
    estimator = cfg.trainer.estimator or DEFAULT_ESTIMATORS[cfg.data.task]
    for module in ("skops.io", estimator.rpartition(".")[0]):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # the first load reports it where it matters
            logger.warning("warming up %s failed: %s", module, exc)


def within(metric: str, value: float, level: float, tolerance: float) -> bool:
    """``value`` is no worse than ``level`` by more than ``tolerance``."""
    return value <= level + tolerance if lower_is_better(metric) else value >= level - tolerance


def locate(ctx: HealContext, change: ChangePoint, version: str | None) -> ChangePoint:
    """``change`` with its first batch, found where ``version``'s quality fell on the labeled batches.

    Each labeled batch in silver that landed after the pre-drift model was promoted (it was
    fit for the world then) is scored with it; the change batch is the first of the newest
    run of batches on which it is worse than its holdout level by more than
    ``healing.recovery_tolerance``. A change that names its batch is kept as it is.
    """
    if change.batch is not None or version is None:
        return change
    try:
        loaded = _model(ctx, version)
        silver = _labeled_silver(ctx)
        if loaded is None or silver.empty or "_batch_id" not in silver:
            return change
        model, tags = loaded
        promoted = tags.get(PROMOTED_AT_TAG)
        if promoted and "_ingested_at" in silver:
            landed = pd.to_datetime(silver["_ingested_at"], utc=True)
            silver = silver[landed >= pd.Timestamp(_aware(datetime.fromisoformat(promoted)))]
        metric = ctx.cfg.gate_metric
        level = float(tags.get(f"metric.{metric}", "nan"))
        if level != level:
            return change
        first = None
        for batch in sorted((int(b) for b in silver["_batch_id"].unique()), reverse=True):
            value = _score(ctx, model, silver[silver["_batch_id"] == batch])
            if value is None:
                continue  # e.g. one class only: no verdict either way
            if within(metric, value, level, ctx.cfg.healing.recovery_tolerance):
                break
            first = batch
    except Exception:  # noqa: BLE001 - locating is best effort: the change time still bounds the retrain
        logger.exception("locating the change batch with v%s failed", version)
        return change
    if first is None:
        return change
    return replace(change, batch=first, how=f"v{version}'s {metric} fell below {level:.3f} from batch {first} on")


# -- quality before, after the drift, and after the repair ---------------------------------
def _live(
    ctx: HealContext, *, start_after: datetime | None = None, end_before: datetime | None = None, newest: int = 1
) -> float | None:
    """The median of the ``newest`` live measurements of the gate metric with their windows in the given bounds."""
    if not ctx.lake.exists(METRICS_TABLE):
        return None
    name = f"performance.{ctx.cfg.gate_metric}"
    table = ctx.lake.read(METRICS_TABLE, columns=["name", "value", "ts", "window_start", "window_end"])
    table = table.filter(pc.equal(table.column("name"), name))
    if start_after is not None:
        table = table.filter(pc.greater_equal(table.column("window_start"), utc(start_after)))
    if end_before is not None:
        table = table.filter(pc.less_equal(table.column("window_end"), utc(end_before)))
    values = [v for v in table.sort_by("ts").column("value").to_pylist() if v is not None][-newest:]
    return float(statistics.median(values)) if values else None


def pre_drift(ctx: HealContext, change: ChangePoint, version: str | None) -> Measure | None:
    """The pre-drift level: measured live before the change, else the pre-drift model's holdout score."""
    if change.at is not None:
        # A few windows, not the last one only: the alarm comes some windows after the change.
        live = _live(ctx, end_before=change.at, newest=_PRE_DRIFT_WINDOWS)
        if live is not None:
            return Measure(live, f"live labels before the change (median of up to {_PRE_DRIFT_WINDOWS} windows)")
    loaded = _tags(ctx, version)
    value = float(loaded.get(f"metric.{ctx.cfg.gate_metric}", "nan")) if loaded else float("nan")
    return Measure(value, f"holdout of v{version}") if value == value else None


def _tags(ctx: HealContext, version: str | None) -> Mapping[str, str] | None:
    if version is None:
        return None
    record = ctx.registry.by_version(version)
    return record.tags if record else None


def post_drift(ctx: HealContext, change: ChangePoint, version: str | None) -> Measure | None:
    """The pre-drift model's quality after the change: on the labeled batches from it, else live."""
    if change.batch is not None and version is not None:
        silver = _labeled_silver(ctx)
        loaded = _model(ctx, version) if "_batch_id" in silver else None
        if loaded is not None:
            rows = silver[silver["_batch_id"] >= change.batch]
            value = _score(ctx, loaded[0], rows)
            if value is not None:
                return Measure(value, f"v{version} on batches from {change.batch} on")
    live = _live(ctx, start_after=change.at) if change.at is not None else None
    return Measure(live, "live labels after the change") if live is not None else None


def post_repair(ctx: HealContext, version: str, applied_at: datetime) -> Measure | None:
    """Version ``version``'s quality on labels after the repair: live windows, else landed batches it never saw.

    The batches are read from bronze (every batch that landed, whether or not a later run's
    gate took it into silver) after the newest batch ``version`` was trained with.
    """
    live = _live(ctx, start_after=applied_at)
    if live is not None:
        return Measure(live, "live labels after the repair")
    tags = _tags(ctx, version) or {}
    trained_on = tags.get(SILVER_VERSION_TAG, "")
    schema = locked_schema(ctx.lake, ctx.cfg)
    if not trained_on.isdigit() or not ctx.lake.exists(SILVER) or not ctx.lake.exists(BRONZE) or schema is None:
        return None
    known = ctx.lake.read(SILVER, version=int(trained_on), columns=["_batch_id"]).column("_batch_id")
    newest = pc.max(known).as_py() if len(known) else -1
    bronze = ctx.lake.read(BRONZE)
    fresh = bronze.filter(pc.greater(bronze.column("_batch_id"), newest)).to_pandas()
    cfg = ctx.cfg
    fresh = features.to_silver(
        fresh, schema, cfg.data.target, [*cfg.data.id_columns, *filter(None, [cfg.data.time_column])]
    )
    fresh = fresh[fresh[cfg.data.target].notna()]
    loaded = _model(ctx, version) if not fresh.empty else None
    value = _score(ctx, loaded[0], fresh) if loaded is not None else None
    if value is None:
        return None
    first, last = int(fresh["_batch_id"].min()), int(fresh["_batch_id"].max())
    return Measure(value, f"v{version} on batches {first}-{last}, landed after it was trained")


@dataclass(frozen=True)
class Recovery:
    """Pre-drift, post-drift and post-repair quality, and whether the repair restored it."""

    metric: str
    tolerance: float
    pre_drift: Measure | None
    post_drift: Measure | None
    post_repair: Measure | None

    @property
    def restored(self) -> bool:
        if self.pre_drift is None or self.post_repair is None:
            return False
        return within(self.metric, self.post_repair.value, self.pre_drift.value, self.tolerance)

    @property
    def ratio(self) -> float | None:
        """post-repair / pre-drift (inverted for lower-is-better metrics)."""
        if self.pre_drift is None or self.post_repair is None or not self.pre_drift.value or not self.post_repair.value:
            return None
        pre, post = self.pre_drift.value, self.post_repair.value
        return pre / post if lower_is_better(self.metric) else post / pre

    def to_evidence(self) -> dict[str, Any]:
        def show(m: Measure | None) -> dict[str, Any] | None:
            return m.to_evidence() if m else None

        return {
            "metric": self.metric,
            "pre_drift": show(self.pre_drift),
            "post_drift": show(self.post_drift),
            "post_repair": show(self.post_repair),
            "recovery_ratio": None if self.ratio is None else round(self.ratio, 4),
            "tolerance": self.tolerance,
        }

    def summary(self) -> str:
        def show(m: Measure | None) -> str:
            return f"{m.value:.3f}" if m else "-"

        return (
            f"{self.metric} pre-drift {show(self.pre_drift)}, post-drift {show(self.post_drift)}, "
            f"post-repair {show(self.post_repair)}"
        )


def labels_seen(ctx: HealContext) -> bool:
    """Has the monitor ever measured the gate metric on live labels?"""
    return _live(ctx) is not None


def signal_raised(ctx: HealContext, kind: str, since: datetime) -> bool:
    """Did a monitor pass raise a ``kind`` signal on a window that started at or after ``since``?"""
    if not ctx.lake.exists(METRICS_TABLE):
        return False
    table = ctx.lake.read(METRICS_TABLE, columns=["name", "labels", "window_start"])
    table = table.filter(
        pc.and_(pc.equal(table.column("name"), "signal"), pc.greater_equal(table.column("window_start"), utc(since)))
    )
    return any(json.loads(labels or "{}").get("kind") == kind for labels in table.column("labels").to_pylist())
