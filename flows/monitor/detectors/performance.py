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
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score

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
        dropped: beyond the tolerance and beyond ``z`` standard errors.
    """

    metric: str
    value: float
    standard_error: float
    baseline: float
    worse_by: float
    dropped: bool


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
    def worst(self) -> MetricCheck | None:
        """The dropped check that is furthest beyond its tolerance (or the worst check)."""
        if not self.checks:
            return None
        return max(self.checks, key=lambda c: (c.dropped, c.worse_by / (c.standard_error or 1.0)))


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
) -> PerformanceCheck | None:
    """Judge the labeled window against the champion's validation metrics.

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
        dropped = bool(beyond and worse > t.z * se)
        checks.append(MetricCheck(name, value, se, base, worse, dropped))
    return PerformanceCheck(n, {k: v for k, (v, _) in computed.items()}, tuple(checks))
