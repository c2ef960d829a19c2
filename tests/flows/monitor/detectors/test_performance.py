"""Performance against the champion's baseline, beyond noise."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flows.monitor.detectors import PerformanceThresholds, check_performance
from flows.monitor.detectors.performance import estimate_performance


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


# -- estimated performance (CBPE) -------------------------------------------------
def test_estimated_auc_and_accuracy_match_labels_drawn_from_calibrated_scores() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.beta(2, 2, 4000), 2)  # rounded: ties are handled too
    pred = (p >= 0.5).astype(float)
    est = estimate_performance(p, pred, "binary", {"roc_auc": 0.9, "accuracy": 0.8})
    assert est is not None
    draws = [rng.random(p.size) < p for _ in range(200)]
    auc = np.mean([roc_auc_score(y, p) for y in draws])
    acc = np.mean([np.mean(y == pred.astype(bool)) for y in draws])
    assert est.metrics["roc_auc"] == pytest.approx(auc, abs=0.005)
    assert est.metrics["accuracy"] == pytest.approx(acc, abs=0.005)


def test_estimated_performance_drops_when_the_model_grows_unsure() -> None:
    rng = np.random.default_rng(1)
    baseline = {"roc_auc": 0.95, "accuracy": 0.9}
    sure = np.concatenate([rng.uniform(0.0, 0.05, 500), rng.uniform(0.95, 1.0, 500)])
    unsure = rng.uniform(0.35, 0.65, 1000)

    confident = estimate_performance(sure, (sure >= 0.5).astype(float), "binary", baseline)
    doubtful = estimate_performance(unsure, (unsure >= 0.5).astype(float), "binary", baseline)

    assert confident is not None and not confident.dropped
    assert doubtful is not None and doubtful.dropped and doubtful.worst in baseline
    assert estimate_performance(sure[:50], sure[:50], "binary", baseline) is None  # fewer than min_labels
    assert estimate_performance(sure, sure, "regression", baseline) is None


def test_a_window_within_the_holdout_batches_spread_is_not_a_drop_and_one_beyond_it_is() -> None:
    rng = np.random.default_rng(22)
    y, p, s = _labeled(rng, 1000, 0.42)
    auc = roc_auc_score(y, s)
    near = {"roc_auc": auc + 0.07}  # 0.07 below the per-batch mean: beyond max_drop and 3 standard errors
    far = {"roc_auc": auc + 0.2}

    alone = check_performance(y, p, s, "binary", near)
    spread = check_performance(y, p, s, "binary", near, spread={"roc_auc": 0.04})
    beyond = check_performance(y, p, s, "binary", far, spread={"roc_auc": 0.04})

    assert alone is not None and alone.dropped
    assert spread is not None and not spread.dropped  # the holdout's own batches varied that much
    assert beyond is not None and beyond.dropped


def test_an_estimate_above_its_baseline_is_measured_as_not_worse_not_unknown() -> None:
    rng = np.random.default_rng(3)
    sure = np.concatenate([rng.uniform(0.0, 0.05, 500), rng.uniform(0.95, 1.0, 500)])
    est = estimate_performance(sure, (sure >= 0.5).astype(float), "binary", {"roc_auc": 0.8, "accuracy": 0.7})

    assert est is not None and est.worst in {"roc_auc", "accuracy"}
    assert est.worse_by < 0 and not est.dropped


def test_an_estimated_drop_within_the_between_batch_spread_is_not_a_drop() -> None:
    rng = np.random.default_rng(4)
    unsure = rng.uniform(0.3, 0.7, 1000)
    est = estimate_performance(unsure, (unsure >= 0.5).astype(float), "binary", {"roc_auc": 0.7})
    assert est is not None and est.dropped
    wide = estimate_performance(
        unsure, (unsure >= 0.5).astype(float), "binary", {"roc_auc": 0.7}, spread={"roc_auc": 0.1}
    )
    assert wide is not None and not wide.dropped
