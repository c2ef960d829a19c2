"""Performance against the champion's baseline, beyond noise."""

from __future__ import annotations

import numpy as np

from flows.monitor.detectors import PerformanceThresholds, check_performance


def _labeled(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.3).astype(float)
    score = np.clip(y * 0.6 + 0.2 + rng.normal(0, noise, n), 0, 1)
    return y, (score >= 0.5).astype(float), score


def test_performance_drop_detected_against_baseline() -> None:
    rng = np.random.default_rng(19)
    y, p, s = _labeled(rng, 2000, 0.1)
    good = check_performance(y, p, s, "binary", {"roc_auc": 0.99})
    assert good is not None and not good.dropped
    y, p, s = _labeled(rng, 2000, 0.45)
    bad = check_performance(y, p, s, "binary", {"roc_auc": 0.99, "holdout_unused": 1.0})
    assert bad is not None and bad.dropped and bad.worst is not None and bad.worst.metric == "roc_auc"


def test_performance_needs_labels_and_beats_noise() -> None:
    rng = np.random.default_rng(20)
    y, p, s = _labeled(rng, 100, 0.1)
    assert check_performance(y, p, s, "binary", {"roc_auc": 0.99}) is None
    y, p, s = _labeled(rng, 250, 0.3)
    loose = check_performance(y, p, s, "binary", {"accuracy": 0.95}, PerformanceThresholds(z=50.0))
    assert loose is not None and not loose.dropped  # a real gap, but not beyond 50 standard errors


def test_regression_error_rise_detected() -> None:
    rng = np.random.default_rng(21)
    y = rng.normal(size=1000)
    check = check_performance(y, y + rng.normal(0, 2.0, 1000), None, "regression", {"rmse": 1.0, "r2": 0.9})
    assert check is not None and check.dropped
    assert {c.metric for c in check.checks if c.dropped} >= {"rmse"}
