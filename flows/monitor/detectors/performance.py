"""Model quality on labeled feedback, against the champion's validation metric.

Labels arrive late (``feedback``); joined with the logged predictions they give
the metrics the model was promoted on. A metric counts as dropped when it is
worse than the champion's validation value by more than a tolerance **and** by
more than ``z`` standard errors of the current estimate, so a small labeled
window cannot alarm on sampling noise alone.

Example:
    >>> check = check_performance(y, pred, score, "binary", {"roc_auc": 0.91}, PerformanceThresholds())
    >>> check.dropped, check.worst.metric, check.worst.value
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from flows.metrics import lower_is_better
from flows.monitor.detectors.thresholds import PerformanceThresholds

Task = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class MetricCheck:
    """One metric against its baseline.

    Attributes:
        metric: its name (``roc_auc``, ``accuracy``, ``f1``, ``f1_macro``, ``r2``, ``rmse``, ``mae``).
        value: on the labeled window.
        standard_error: of ``value`` (analytic approximation).
        baseline: the champion's validation value.
        worse_by: how much worse than the baseline (absolute; > 0 is worse).
        dropped: beyond the tolerance and beyond ``z`` standard errors (or the between-batch spread).
        beyond_own_error: beyond the tolerance and beyond ``z`` of the window's own standard
            error, whatever the spread: the model is worse on these very rows (drift impact).
    """

    metric: str
    value: float
    standard_error: float
    baseline: float
    worse_by: float
    dropped: bool
    beyond_own_error: bool


@dataclass(frozen=True)
class PerformanceCheck:
    """Metrics on one labeled window and the verdict per metric with a baseline.

    Attributes:
        n: labeled predictions used.
        metrics: every metric computed, by name.
        checks: the metrics that had a baseline, judged.
    """

    n: int
    metrics: Mapping[str, float]
    checks: tuple[MetricCheck, ...]

    @property
    def dropped(self) -> bool:
        return any(c.dropped for c in self.checks)

    @property
    def beyond_own_error(self) -> bool:
        return any(c.beyond_own_error for c in self.checks)

    @property
    def worst(self) -> MetricCheck | None:
        """The dropped check that is furthest beyond its tolerance (or the worst check)."""
        if not self.checks:
            return None
        return max(self.checks, key=lambda c: (c.dropped, c.worse_by / (c.standard_error or 1.0)))


#: MLflow metric-key prefixes of the per-batch baseline (``flows.pipeline.stages.train.per_batch``).
PER_BATCH_MEAN, PER_BATCH_SPREAD = "per_batch.", "per_batch_spread."


def per_batch_metrics(per_batch: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """The per-batch baseline as flat MLflow metrics: ``per_batch.<name>`` and ``per_batch_spread.<name>``."""
    flat = {f"{PER_BATCH_MEAN}{k}": mean for k, (mean, _) in per_batch.items()}
    return flat | {f"{PER_BATCH_SPREAD}{k}": spread for k, (_, spread) in per_batch.items()}


def per_batch_baseline(raw: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Read back ``per_batch_metrics``: (mean by metric, between-batch standard deviation by metric)."""
    means: dict[str, float] = {}
    spreads: dict[str, float] = {}
    for key, value in raw.items():
        for prefix, into in ((PER_BATCH_SPREAD, spreads), (PER_BATCH_MEAN, means)):
            if key.startswith(prefix):
                try:
                    into[key.removeprefix(prefix)] = float(value)
                except (TypeError, ValueError):
                    pass
                break
    return means, {k: v for k, v in spreads.items() if k in means}


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def task_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, score: ArrayLike | None, task: Task
) -> dict[str, tuple[float, float]]:
    """Metrics of ``task`` with their standard errors: name -> (value, se).

    Args:
        y_true: labels.
        y_pred: predictions (class labels, or values for regression).
        score: positive-class probability (binary) for AUC; None skips AUC.
        task: ``binary``, ``multiclass`` or ``regression``.
    """
    # sklearn (1.8 s of imports) only when there are labels to score.
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score

    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    n = y.size
    out: dict[str, tuple[float, float]] = {}
    if n == 0:
        return out
    if task == "regression":
        err = p - y
        sq = err * err
        mse = float(sq.mean())
        se_mse = float(sq.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        rmse = math.sqrt(mse)
        out["rmse"] = (rmse, se_mse / (2 * rmse) if rmse > 0 else 0.0)
        ae = np.abs(err)
        out["mae"] = (float(mean_absolute_error(y, p)), float(ae.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf)
        var_y = float(y.var())
        if var_y > 0 and n > 1:
            out["r2"] = (float(r2_score(y, p)), se_mse / var_y)
        return out
    acc = float(accuracy_score(y, p))
    out["accuracy"] = (acc, math.sqrt(acc * (1 - acc) / n))
    if task == "binary":
        f1 = float(f1_score(y, p, zero_division=0.0))
        involved = int(np.sum((y == 1) | (p == 1)))
        out["f1"] = (f1, math.sqrt(f1 * (1 - f1) / involved) if involved else math.inf)
        n_pos = int(np.sum(y == 1))
        if score is not None and 0 < n_pos < n:
            s = np.asarray(score, dtype=np.float64)
            if np.all(np.isfinite(s)):
                auc = float(roc_auc_score(y, s))
                out["roc_auc"] = (auc, _auc_se(auc, n_pos, n - n_pos))
    else:
        f1m = float(f1_score(y, p, average="macro", zero_division=0.0))
        out["f1_macro"] = (f1m, math.sqrt(f1m * (1 - f1m) / n))
    return out


def check_performance(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    score: ArrayLike | None,
    task: Task,
    baseline: Mapping[str, float],
    thresholds: PerformanceThresholds | None = None,
    spread: Mapping[str, float] | None = None,
) -> PerformanceCheck | None:
    """Judge the labeled window against the champion's validation metrics.

    Args:
        spread: per metric, the standard deviation of the champion's quality between
            holdout batches (``per_batch_baseline``); the ``z`` test uses it when it is
            wider than the window's own standard error, so a batch no further from the
            mean than the holdout's batches vary is not a drop.

    Returns:
        None when fewer than ``min_labels`` labels are available; otherwise the check.
    """
    t = thresholds or PerformanceThresholds()
    n = int(np.asarray(y_true).size)
    if n < t.min_labels:
        return None
    computed = task_metrics(y_true, y_pred, score, task)
    checks = []
    for name, (value, se) in computed.items():
        if name not in baseline or not math.isfinite(float(baseline[name])):
            continue
        base = float(baseline[name])
        if lower_is_better(name):
            worse = value - base
            beyond = base > 0 and worse / base > t.max_error_increase
        else:
            worse = base - value
            beyond = worse > t.max_drop
        dropped = bool(beyond and worse > t.z * max(se, float((spread or {}).get(name, 0.0))))
        checks.append(MetricCheck(name, value, se, base, worse, dropped, bool(beyond and worse > t.z * se)))
    return PerformanceCheck(n, {k: v for k, (v, _) in computed.items()}, tuple(checks))


@dataclass(frozen=True)
class EstimatedPerformance:
    """Quality estimated from the model's own confidence, without labels (CBPE).

    Attributes:
        metrics: estimated value by metric name (``roc_auc``, ``accuracy``).
        worst: the metric that fell most below its baseline, or rose least above it (None: no baseline).
        worse_by: how far below (absolute; > 0 is worse, < 0 is better than the baseline).
        dropped: ``worse_by`` beyond ``max_drop`` and beyond ``z`` between-batch standard deviations.
        rows: predictions the estimate rests on.
    """

    metrics: Mapping[str, float]
    worst: str | None
    worse_by: float
    dropped: bool
    rows: int


def estimate_performance(
    scores: ArrayLike,
    predictions: ArrayLike,
    task: Task,
    baseline: Mapping[str, float],
    thresholds: PerformanceThresholds | None = None,
    spread: Mapping[str, float] | None = None,
) -> EstimatedPerformance | None:
    """Confidence-based performance estimation (CBPE, as NannyML does it) for unlabeled predictions.

    If the scores are calibrated probabilities, a prediction with positive-class
    probability ``p`` is right with probability ``p`` (predicted 1) or ``1 - p``
    (predicted 0), so expected accuracy is their mean, and expected ROC AUC is the
    expected share of (positive, negative) pairs ranked right, each pair weighted by
    the chance that it is one. It is an estimate: it cannot see a change in the
    relation between inputs and label (concept drift); that needs labels.

    Returns:
        None for regression, too few rows (``min_labels``) or no finite scores.
    """
    t = thresholds or PerformanceThresholds()
    p = np.asarray(scores, dtype=np.float64)
    pred = np.asarray(predictions, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(pred)
    p, pred = np.clip(p[keep], 0.0, 1.0), pred[keep]
    if task == "regression" or p.size < t.min_labels:
        return None
    metrics: dict[str, float] = {}
    if task == "binary":
        metrics["accuracy"] = float(np.mean(np.where(pred == 1, p, 1.0 - p)))
        auc = _expected_auc(p)
        if auc is not None:
            metrics["roc_auc"] = auc
    else:  # multiclass: the score is the top class's probability, the chance the label is it
        metrics["accuracy"] = float(np.mean(p))
    # The worst metric that has a baseline, even when it is above it (worse_by < 0): "measured, not worse".
    worst, worse_by, dropped = None, -math.inf, False
    for name, value in metrics.items():
        if name in baseline and math.isfinite(float(baseline[name])) and float(baseline[name]) - value > worse_by:
            worst, worse_by = name, float(baseline[name]) - value
            # As for labels: beyond the tolerance and beyond z between-batch standard deviations.
            dropped = worse_by > t.max_drop and worse_by > t.z * float((spread or {}).get(name, 0.0))
    return EstimatedPerformance(metrics, worst, worse_by if worst else 0.0, dropped, int(p.size))


def _expected_auc(p: np.ndarray[Any, np.dtype[np.float64]]) -> float | None:
    """Expected ROC AUC when each row is positive with probability ``p`` (ranked by ``p``; ties count half)."""
    order = np.argsort(p, kind="stable")
    ps = p[order]
    neg = 1.0 - ps
    # For each row: the negative weight of rows scored strictly lower, plus half of its tie group's (self excluded).
    _, start, counts = np.unique(ps, return_index=True, return_counts=True)
    below = np.concatenate([[0.0], np.cumsum(neg)])[start]
    tie_neg = np.add.reduceat(neg, start)
    group_below = np.repeat(below, counts)
    group_tie = np.repeat(tie_neg, counts)
    right = np.sum(ps * (group_below + 0.5 * (group_tie - neg)))
    pairs = ps.sum() * neg.sum() - np.sum(ps * neg)
    return float(right / pairs) if pairs > 0 else None
