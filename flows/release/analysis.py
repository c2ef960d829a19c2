"""The release analysis' measurements: challenger against champion on the same traffic.

Both arms come from the inference log since the release started: in a canary the
rows each arm's requests got (routing is by request-id hash, so both arms are
samples of one stream); in shadow the challenger's rows in ``shadow_log`` and the
champion's answers to *the same requests*. Labels come from ``feedback`` as they
arrive. Each metric gives three numbers the conditions can use:

=====================  ==============================  ===================================
metric                 ``challenger`` / ``champion``    ``result``
=====================  ==============================  ===================================
error_rate             share of an arm's rows its own   challenger - champion
                       model did not answer
latency_p99_ms         p99 of ``_latency_ms``           challenger - champion
prediction_distance    -                                Jensen-Shannon distance of the
                                                        arms' score (or value) distributions
quality                the quality metric on labels     improvement: challenger - champion,
                                                        sign flipped when lower is better
=====================  ==============================  ===================================

A measurement is successful, failed or inconclusive (neither condition holds, or an
arm has fewer than ``min_samples`` rows), as in Argo Rollouts; ``judge`` turns the
counts into the release's verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from checkpoints import Lake
from checkpoints.exceptions import CheckpointError
from flows.conditions import holds
from flows.config import AnalysisMetric, ReleaseConfig
from flows.metrics import lower_is_better
from flows.monitor.detectors._stats import jensen_shannon, quantile_bin_counts
from flows.monitor.detectors.performance import task_metrics
from serving.inference_log import FEEDBACK_TABLE, INFERENCE_TABLE
from serving.release import SHADOW_TABLE, ReleaseState

logger = logging.getLogger(__name__)

Phase = Literal["successful", "failed", "inconclusive"]
Verdict = Literal["continue", "successful", "failed", "inconclusive"]
_COLUMNS = ["_request_id", "_ts", "_served_by", "_prediction", "_score", "_latency_ms", "_variant"]
_DISTANCE_BINS = 10


@dataclass(frozen=True)
class Arm:
    """One arm's rows since the release started."""

    request_ids: list[str]
    answered: np.ndarray[Any, np.dtype[np.bool_]]
    """Whether the arm's own model answered each row."""
    latency_ms: np.ndarray[Any, np.dtype[np.float64]]
    prediction: np.ndarray[Any, np.dtype[np.float64]]
    score: np.ndarray[Any, np.dtype[np.float64]]

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    @classmethod
    def of(cls, table: pa.Table) -> Arm:
        def floats(name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

        served = table.column("_served_by").to_pylist()
        return cls(
            [str(r) for r in table.column("_request_id").to_pylist()],
            np.asarray([s == "primary" for s in served], dtype=bool),
            floats("_latency_ms"),
            floats("_prediction"),
            floats("_score"),
        )


@dataclass(frozen=True)
class Measurement:
    """One metric measured once."""

    metric: str
    phase: Phase
    challenger: float | None = None
    champion: float | None = None
    result: float | None = None
    samples: int = 0
    detail: str = ""


@dataclass
class Arms:
    """Both arms and the labels that arrived for their requests."""

    challenger: Arm
    champion: Arm
    labels: dict[str, float] = field(default_factory=dict)


def _since(lake: Lake, table: str, started_at: float) -> pa.Table | None:
    if not lake.exists(table):
        return None
    try:
        rows = lake.read(table, columns=_COLUMNS)
    except (CheckpointError, pa.ArrowInvalid, KeyError) as exc:
        logger.warning("release analysis cannot read %s: %s", table, exc)
        return None
    start = pa.scalar(datetime.fromtimestamp(started_at, UTC), type=rows.schema.field("_ts").type)
    return rows.filter(pc.greater_equal(rows.column("_ts"), start))


def read_arms(lake: Lake, state: ReleaseState) -> Arms | None:
    """Both arms of the release since it started (None: nothing logged yet)."""
    served = _since(lake, INFERENCE_TABLE, state.started_at)
    if served is None:
        return None
    variant = pc.fill_null(served.column("_variant"), "champion")
    if state.mode == "canary":
        challenger = served.filter(pc.equal(variant, "challenger"))
        champion = served.filter(pc.equal(variant, "champion"))
    else:
        challenger = _since(lake, SHADOW_TABLE, state.started_at)
        if challenger is None:
            return None
        same = pc.is_in(served.column("_request_id"), value_set=challenger.column("_request_id"))
        champion = served.filter(same)
    arms = Arms(Arm.of(challenger), Arm.of(champion))
    if lake.exists(FEEDBACK_TABLE):
        feedback = lake.read(FEEDBACK_TABLE, columns=["request_id", "label"])
        wanted = pa.array(arms.challenger.request_ids + arms.champion.request_ids, pa.string())
        feedback = feedback.filter(pc.is_in(feedback.column("request_id"), value_set=wanted))
        arms.labels = dict(
            zip(feedback.column("request_id").to_pylist(), feedback.column("label").to_pylist(), strict=True)
        )
    return arms


def _too_few(metric: str, samples: int, spec: AnalysisMetric) -> Measurement | None:
    if samples < spec.min_samples:
        return Measurement(metric, "inconclusive", samples=samples, detail=f"{samples} < {spec.min_samples} samples")
    return None


def _decide(metric: str, spec: AnalysisMetric, values: dict[str, float], samples: int, detail: str) -> Measurement:
    phase: Phase = "inconclusive"
    if spec.failure_condition and holds(spec.failure_condition, values):
        phase = "failed"
    elif spec.success_condition and holds(spec.success_condition, values):
        phase = "successful"
    elif not spec.success_condition and spec.failure_condition:
        phase = "successful"  # Argo: only a failure condition, and it does not hold
    return Measurement(
        metric, phase, values.get("challenger"), values.get("champion"), values.get("result"), samples, detail
    )


def _error_rate(arms: Arms, spec: AnalysisMetric) -> Measurement:
    samples = min(arms.challenger.rows, arms.champion.rows)
    if (few := _too_few("error_rate", samples, spec)) is not None:
        return few
    ch = 1.0 - float(arms.challenger.answered.mean())
    cp = 1.0 - float(arms.champion.answered.mean())
    return _decide("error_rate", spec, {"challenger": ch, "champion": cp, "result": ch - cp}, samples, "")


def _latency(arms: Arms, spec: AnalysisMetric) -> Measurement:
    samples = min(arms.challenger.rows, arms.champion.rows)
    if (few := _too_few("latency_p99_ms", samples, spec)) is not None:
        return few
    ch = float(np.percentile(arms.challenger.latency_ms, 99))
    cp = float(np.percentile(arms.champion.latency_ms, 99))
    return _decide("latency_p99_ms", spec, {"challenger": ch, "champion": cp, "result": ch - cp}, samples, "")


def _outputs(arm: Arm) -> np.ndarray[Any, np.dtype[np.float64]]:
    """What the arm's own model answered: scores where the model has them, else values."""
    values = arm.score if np.isfinite(arm.score[arm.answered]).all() and arm.answered.any() else arm.prediction
    kept = values[arm.answered]
    return np.sort(kept[np.isfinite(kept)])


def _distance(arms: Arms, spec: AnalysisMetric) -> Measurement:
    ch, cp = _outputs(arms.challenger), _outputs(arms.champion)
    samples = min(ch.size, cp.size)
    if (few := _too_few("prediction_distance", samples, spec)) is not None:
        return few
    ref_counts, cur_counts = quantile_bin_counts(cp, ch, _DISTANCE_BINS)
    distance = jensen_shannon(ref_counts, cur_counts)
    return _decide("prediction_distance", spec, {"result": distance}, samples, f"{_DISTANCE_BINS} quantile bins")


def _quality_of(arm: Arm, labels: dict[str, float], metric: str, task: str) -> tuple[float | None, int]:
    keep = [i for i, rid in enumerate(arm.request_ids) if arm.answered[i] and rid in labels]
    if not keep:
        return None, 0
    y = np.asarray([labels[arm.request_ids[i]] for i in keep], dtype=np.float64)
    score = arm.score[keep]
    if metric == "brier":
        return (float(np.mean((score - y) ** 2)) if np.isfinite(score).all() else None), len(keep)
    found = task_metrics(y, arm.prediction[keep], score if np.isfinite(score).all() else None, task)  # type: ignore[arg-type]
    return (found[metric][0] if metric in found else None), len(keep)


def _quality(arms: Arms, spec: AnalysisMetric, metric: str, task: str) -> Measurement:
    ch, n_ch = _quality_of(arms.challenger, arms.labels, metric, task)
    cp, n_cp = _quality_of(arms.champion, arms.labels, metric, task)
    samples = min(n_ch, n_cp)
    if (few := _too_few("quality", samples, spec)) is not None:
        return few
    if ch is None or cp is None:
        return Measurement("quality", "inconclusive", samples=samples, detail=f"{metric} cannot be computed yet")
    better = cp - ch if lower_is_better(metric) else ch - cp
    values = {"challenger": ch, "champion": cp, "result": better}
    return _decide("quality", spec, values, samples, f"{metric} on {n_ch}/{n_cp} labeled rows")


def measure(arms: Arms | None, config: ReleaseConfig, quality_metric: str, task: str) -> list[Measurement]:
    """One measurement of every enabled metric (all inconclusive when nothing was logged yet)."""
    out = []
    for name, spec in config.metrics.items():
        if not spec.enabled:
            continue
        if arms is None:
            out.append(Measurement(name, "inconclusive", detail="no rows logged since the release started"))
        elif name == "error_rate":
            out.append(_error_rate(arms, spec))
        elif name == "latency_p99_ms":
            out.append(_latency(arms, spec))
        elif name == "prediction_distance":
            out.append(_distance(arms, spec))
        else:
            out.append(_quality(arms, spec, quality_metric, task))
    return out


_PHASE_INDEX = {"successful": 0, "failed": 1, "inconclusive": 2}


def _over_limit(counts: dict[str, list[int]], config: ReleaseConfig, phase: str) -> list[str]:
    """The metrics whose ``phase`` measurements exceed that phase's limit, in words."""
    out = []
    for name, c in counts.items():
        spec = config.metrics.get(name)
        limit = None if spec is None else (spec.failure_limit if phase == "failed" else spec.inconclusive_limit)
        if limit is not None and c[_PHASE_INDEX[phase]] > limit:
            out.append(f"{name} {phase} {c[_PHASE_INDEX[phase]]} time(s) (limit {limit})")
    return out


def tally(counts: dict[str, list[int]], measurements: list[Measurement]) -> dict[str, list[int]]:
    """Counts per metric ([successful, failed, inconclusive]) after these measurements."""
    out = {k: list(v) for k, v in counts.items()}
    for m in measurements:
        row = out.setdefault(m.metric, [0, 0, 0])
        row[_PHASE_INDEX[m.phase]] += 1
    return out


def judge(counts: dict[str, list[int]], measurements_taken: int, config: ReleaseConfig) -> tuple[Verdict, str]:
    """The release's verdict, as an Argo AnalysisRun decides it.

    A metric fails once its failed measurements exceed ``failure_limit`` (the run fails
    at once), is inconclusive once its inconclusive ones exceed ``inconclusive_limit``;
    after ``count`` measurements with neither, the run is successful.
    """
    for verdict in ("failed", "inconclusive"):
        over = _over_limit(counts, config, verdict)
        if over:
            return verdict, "; ".join(over)  # type: ignore[return-value]
    if measurements_taken >= config.count:
        return "successful", f"{measurements_taken} measurements within every metric's limits"
    return "continue", f"{measurements_taken}/{config.count} measurements, no limit exceeded"
