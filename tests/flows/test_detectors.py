"""Detectors on constructed data where the right answer is known."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flows.config import ConfigError
from flows.monitor.detectors import (
    ConsecutiveWindows,
    DriftThresholds,
    ErrorCusum,
    MonitorThresholds,
    PerformanceThresholds,
    ReferenceProfile,
    SeriesHistory,
    _stats,
    check_freshness,
    check_missing_rows,
    check_performance,
    compare,
    robust_z,
)

# -- statistics ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    b=st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    scale=st.sampled_from([1.0, 0.37, 1e-3]),
)
def test_ks_and_wasserstein_equal_scipy_with_and_without_ties(a: list[int], b: list[int], scale: float) -> None:
    r = np.sort(np.asarray(a, dtype=float) * scale)
    c = np.sort(np.asarray(b, dtype=float) * scale)
    d, w = _stats.ks_wasserstein(r, c)
    with warnings.catch_warnings():  # scipy's p-value for 1-element samples warns; only its statistic is used
        warnings.simplefilter("ignore")
        expected = stats.ks_2samp(r, c, method="asymp").statistic
    assert d == pytest.approx(expected, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(r, c), rel=1e-9, abs=1e-12)
    assert 0.0 <= _stats.ks_pvalue(d, r, c) <= 1.0


@pytest.mark.parametrize("n,m", [(500, 500), (1000, 300), (5000, 700)])
def test_ks_and_wasserstein_equal_scipy_on_continuous_data(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    r, c = np.sort(rng.normal(size=n)), np.sort(rng.normal(0.1, 1.2, size=m))
    d, w = _stats.ks_wasserstein(r, c)
    assert d == pytest.approx(stats.ks_2samp(r, c).statistic, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(r, c), rel=1e-9)


@pytest.mark.parametrize("n,m", [(40, 50), (300, 400), (3000, 5000), (200_000, 100_000)])
def test_ks_pvalue_matches_scipy_asymptotic_or_exact(n: int, m: int) -> None:
    rng = np.random.default_rng(3)
    r, c = np.sort(rng.normal(size=n)), np.sort(rng.normal(0.05, 1, size=m))
    d, _ = _stats.ks_wasserstein(r, c)
    method = "exact" if n * m <= 10_000 else "asymp"
    expected = stats.ks_2samp(r, c, method=method).pvalue
    assert _stats.ks_pvalue(d, r, c) == pytest.approx(expected, rel=0.02)


def test_adjusted_pvalues_known_values() -> None:
    p = [0.01, 0.04, 0.03]
    assert _stats.adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert _stats.adjust_pvalues(p, "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    assert _stats.adjust_pvalues(p, "fdr_bh") == pytest.approx([0.03, 0.04, 0.04])
    assert _stats.adjust_pvalues(p, "none") == p
    with pytest.raises(ValueError):
        _stats.adjust_pvalues(p, "sidak")


def test_chi2_equals_scipy_contingency() -> None:
    a, b = np.array([40.0, 30, 20, 10]), np.array([25.0, 30, 25, 20])
    stat, p = _stats.chi2_homogeneity(a, b)
    expected = stats.chi2_contingency(np.vstack([a, b]), correction=False)
    assert stat == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_psi_and_jensen_shannon_known_values() -> None:
    same = np.array([10.0, 20, 30])
    assert _stats.psi(same, same) == 0.0
    assert _stats.jensen_shannon(same, same) == 0.0
    assert _stats.jensen_shannon(np.array([1.0, 0]), np.array([0.0, 1])) == pytest.approx(1.0)
    # 50/50 -> 80/20: (0.3 ln 1.6) + (-0.3 ln 0.4)
    assert _stats.psi(np.array([50.0, 50]), np.array([80.0, 20])) == pytest.approx(
        0.3 * np.log(1.6) - 0.3 * np.log(0.4)
    )


# -- compare: numeric ----------------------------------------------------------------


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0, scale: float = 1.0, cols: int = 5) -> pd.DataFrame:
    data = {f"x{i}": rng.normal(size=n) for i in range(cols)}
    data["x0"] = data["x0"] * scale + shift
    return pd.DataFrame(data)


def test_no_drift_raises_no_alarm_over_many_windows() -> None:
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.from_data(_frame(rng, 5000))
    alarms = [compare(profile, _frame(rng, 500)).drifted for _ in range(200)]
    assert sum(alarms) == 0


def test_no_drift_without_the_effect_floor_alarms_at_about_alpha() -> None:
    # The control for the test above: the same windows with a loose alpha and no floor do alarm.
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.from_data(_frame(rng, 5000))
    loose = DriftThresholds(alpha=0.2, numeric_effect_floor=0.0)
    alarms = [compare(profile, _frame(rng, 500), loose).drifted for _ in range(200)]
    assert 10 <= sum(alarms) <= 80


def test_large_n_tiny_shift_is_significant_but_not_drift() -> None:
    rng = np.random.default_rng(1)
    ref, cur = _frame(rng, 200_000, cols=2), _frame(rng, 200_000, shift=0.03, cols=2)
    report = compare(ref, cur)
    x0 = report.features["x0"]
    assert x0.p_adjusted < 0.01  # the test alone would alarm ...
    assert x0.effect_size < 0.1  # ... the effect floor keeps it quiet
    assert not x0.drifted and not report.drifted


def test_half_sigma_shift_in_one_feature_is_drift_in_that_feature_only() -> None:
    rng = np.random.default_rng(2)
    report = compare(_frame(rng, 5000), _frame(rng, 500, shift=0.5))
    assert report.drifted
    assert report.drifted_features == ["x0"]
    assert report.drift_share == pytest.approx(1 / 5)
    x0 = report.features["x0"]
    assert x0.test == "ks" and x0.effect_size == pytest.approx(0.5, abs=0.1)
    assert x0.severity == "critical" and report.severity == "critical"
    assert x0.psi > 0.1


def test_variance_change_is_drift() -> None:
    rng = np.random.default_rng(3)
    report = compare(_frame(rng, 5000), _frame(rng, 1000, scale=2.0))
    assert report.drifted_features == ["x0"]


def test_dataset_drift_share_requires_that_share_of_features() -> None:
    rng = np.random.default_rng(4)
    ref, cur = _frame(rng, 3000), _frame(rng, 1000, shift=1.0)
    assert compare(ref, cur, DriftThresholds(dataset_drift_share=0.0)).drifted
    assert not compare(ref, cur, DriftThresholds(dataset_drift_share=0.5)).drifted


def test_pandas_and_arrow_inputs_and_reused_profile_agree() -> None:
    rng = np.random.default_rng(5)
    ref, cur = _frame(rng, 2000), _frame(rng, 700, shift=0.3)
    a = compare(ref, cur)
    b = compare(pa.Table.from_pandas(ref), pa.Table.from_pandas(cur))
    c = compare(ReferenceProfile.from_data(ref), cur)
    for name in a.features:
        assert a.features[name].statistic == b.features[name].statistic == c.features[name].statistic
        assert a.features[name].p_adjusted == pytest.approx(c.features[name].p_adjusted)


def test_large_inputs_are_subsampled_reproducibly() -> None:
    rng = np.random.default_rng(6)
    ref, cur = _frame(rng, 30_000, cols=2), _frame(rng, 30_000, cols=2)
    t = DriftThresholds(max_sample_size=10_000)
    first, second = compare(ref, cur, t), compare(ref, cur, t)
    assert first.features["x0"].n_reference == 10_000
    assert first.features["x0"].statistic == second.features["x0"].statistic
    assert first.rows_reference == 30_000


def test_too_few_values_are_not_tested() -> None:
    rng = np.random.default_rng(7)
    report = compare(_frame(rng, 1000), _frame(rng, 10, shift=3.0))
    assert not report.drifted
    assert report.features["x0"].test == "none"
    assert "fewer than 30" in (report.features["x0"].note or "")


def test_missing_share_rise_is_a_quality_issue() -> None:
    rng = np.random.default_rng(8)
    cur = _frame(rng, 1000)
    cur.loc[:199, "x1"] = np.nan
    report = compare(_frame(rng, 2000), cur)
    assert report.features["x1"].missing_share_current == pytest.approx(0.2)
    assert [(q.feature, q.issue) for q in report.quality_issues] == [("x1", "missing_share")]
    assert not report.features["x1"].drifted  # the present values did not move


def test_missing_and_retyped_columns_are_quality_issues() -> None:
    rng = np.random.default_rng(9)
    ref = _frame(rng, 1000)
    cur = _frame(rng, 500).drop(columns=["x4"])
    cur["x3"] = cur["x3"].astype(str)
    report = compare(ref, cur)
    assert {(q.feature, q.issue) for q in report.quality_issues} == {("x4", "missing_column"), ("x3", "type_changed")}


def test_report_to_dict_is_json() -> None:
    rng = np.random.default_rng(10)
    report = compare(_frame(rng, 1000), _frame(rng, 300, shift=1.0))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["drifted"] is True and data["features"]["x0"]["drifted"] is True


# -- compare: categorical --------------------------------------------------------------

CATS = ["a", "b", "c", "d"]


def _cats(rng: np.random.Generator, n: int, p: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"merchant": rng.choice(CATS, size=n, p=p)})


def test_categorical_no_change_no_alarm() -> None:
    rng = np.random.default_rng(11)
    ref = ReferenceProfile.from_data(_cats(rng, 5000, [0.4, 0.3, 0.2, 0.1]))
    assert not any(compare(ref, _cats(rng, 500, [0.4, 0.3, 0.2, 0.1])).drifted for _ in range(30))


def test_categorical_share_change_is_drift() -> None:
    rng = np.random.default_rng(12)
    report = compare(_cats(rng, 5000, [0.4, 0.3, 0.2, 0.1]), _cats(rng, 500, [0.2, 0.3, 0.2, 0.3]))
    f = report.features["merchant"]
    assert f.kind == "categorical" and f.test == "chi2" and f.drifted
    assert f.effect_size > 0.1 and f.p_adjusted < 0.01


def test_new_category_share_is_reported() -> None:
    rng = np.random.default_rng(13)
    cur = _cats(rng, 1000, [0.4, 0.3, 0.2, 0.1])
    cur.loc[:49, "merchant"] = "brand-new"
    report = compare(_cats(rng, 5000, [0.4, 0.3, 0.2, 0.1]), cur)
    assert report.features["merchant"].new_category_share == pytest.approx(0.05)
    assert ("merchant", "new_category") in {(q.feature, q.issue) for q in report.quality_issues}


def test_bool_and_dictionary_columns_are_categorical() -> None:
    table = pa.table(
        {
            "flag": pa.array([True, False] * 100),
            "kind": pa.array(["x", "y"] * 100).dictionary_encode(),
        }
    )
    report = compare(table, table)
    assert report.features["flag"].kind == "categorical"
    assert report.features["kind"].kind == "categorical"
    assert report.features["kind"].statistic == 0.0 and not report.drifted


# -- thresholds ------------------------------------------------------------------------


def test_thresholds_from_mapping_defaults_and_overrides() -> None:
    t = MonitorThresholds.from_mapping({"drift": {"alpha": 0.05}, "consecutive": {"latency": 5}})
    assert t.drift.alpha == 0.05 and t.drift.numeric_effect_floor == 0.1
    assert t.consecutive_for("latency") == 5 and t.consecutive_for("data_drift") == 1
    assert t.consecutive_for("missing_rows:inference_log") == 3


@pytest.mark.parametrize(
    "data,key",
    [
        ({"drift": {"alpah": 0.05}}, "thresholds.drift.alpah"),
        ({"drift": {"alpha": 2.0}}, "thresholds.drift.alpha"),
        ({"unknown": 1}, "thresholds.unknown"),
        ({"consecutive": {"latency": 0}}, "consecutive.latency"),
        ({"consecutive": {"latncy": 2}}, "consecutive.latncy"),
    ],
)
def test_bad_thresholds_raise_config_error_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MonitorThresholds.from_mapping(data)


# -- concept drift: CUSUM ----------------------------------------------------------------


def _loop_cusum(det: ErrorCusum, errors: np.ndarray) -> list[int]:
    """Reference implementation: the textbook recursion, one sample at a time."""
    hits = []
    for i, e in enumerate(errors):
        if det.update(float(e)):
            hits.append(i)
    return hits


def test_cusum_closed_form_equals_recursion() -> None:
    rng = np.random.default_rng(14)
    errors = np.concatenate([rng.random(2000) < 0.1, rng.random(3000) < 0.3]).astype(float)
    a, b = ErrorCusum(warmup=500), ErrorCusum(warmup=500)
    assert a.update_many(errors[:700]) is None and not _loop_cusum(b, errors[:700])
    errors = errors[700:]
    first = a.update_many(errors)
    hits = _loop_cusum(b, errors)
    assert first == hits[0] and a.alarms == b.alarms == len(hits)
    assert a.statistic == pytest.approx(b.statistic)


def test_cusum_quiet_on_unchanged_error_rate() -> None:
    rng = np.random.default_rng(15)
    det = ErrorCusum(warmup=500)  # this seed's warm-up estimate is 2 standard errors low
    assert det.update_many((rng.random(100_000) < 0.1).astype(float)) is None
    assert det.alarms == 0 and det.baseline == pytest.approx(0.076, abs=0.002)
    rng = np.random.default_rng(15)
    bare = ErrorCusum(warmup=500, baseline_margin=0.0)  # the control: without the margin it false-alarms
    assert bare.update_many((rng.random(100_000) < 0.1).astype(float)) is not None


def test_cusum_detects_error_rise_soon_after_onset() -> None:
    rng = np.random.default_rng(16)
    before, after = (rng.random(5000) < 0.1).astype(float), (rng.random(2000) < 0.25).astype(float)
    det = ErrorCusum(warmup=500)
    assert det.update_many(before) is None
    hit = det.update_many(after)
    assert hit is not None and hit < 400


def test_cusum_no_alarm_during_warmup_and_state_round_trips() -> None:
    rng = np.random.default_rng(17)
    errors = (rng.random(3000) < 0.1).astype(float)
    errors[:400] = 1.0  # terrible start, but it is the warm-up: it sets the baseline, never alarms
    whole = ErrorCusum(warmup=500)
    assert whole.update_many(errors[:500]) is None
    split = ErrorCusum.from_dict(json.loads(json.dumps(whole.to_dict())))
    tail = (rng.random(4000) < 0.5).astype(float)
    assert whole.update_many(tail) == split.update_many(tail)
    assert whole.to_dict() == split.to_dict()


def test_cusum_gaussian_kind_detects_mean_rise() -> None:
    rng = np.random.default_rng(18)
    det = ErrorCusum(kind="gaussian", warmup=500)
    assert det.update_many(np.abs(rng.normal(size=20_000))) is None
    assert det.update_many(np.abs(rng.normal(size=2000)) * 1.5) is not None


# -- anomalies and rules ---------------------------------------------------------------


def test_robust_z_flags_spike_but_not_wiggle() -> None:
    history = [120.0, 118, 125, 121, 119, 122, 120, 123]
    assert robust_z(history, 410.0).anomalous
    assert not robust_z(history, 126.0).anomalous
    assert not robust_z(history, 40.0).anomalous  # direction "up"
    assert robust_z(history, 40.0, direction="both").anomalous


def test_robust_z_needs_history_and_respects_floors() -> None:
    assert not robust_z([100.0] * 3, 1000.0).anomalous  # too little history
    flat = [0.0] * 20
    assert not robust_z(flat, 0.005, absolute_floor=0.01).anomalous
    assert robust_z(flat, 0.2, absolute_floor=0.01).anomalous
    assert not robust_z([100.0] * 20, 105.0, relative_floor=0.1).anomalous


def test_series_history_is_bounded_and_round_trips() -> None:
    h = SeriesHistory(maxlen=3)
    for v in [1.0, 2.0, float("nan"), 3.0, 4.0]:
        h.push("s", v)
    assert h.values("s") == [2.0, 3.0, 4.0]
    assert SeriesHistory.from_dict(h.to_dict(), 3).values("s") == [2.0, 3.0, 4.0]


def test_consecutive_windows_rule() -> None:
    rule = ConsecutiveWindows({"latency": 3})
    assert [rule.observe("latency", True) for _ in range(4)] == [False, False, True, True]
    assert rule.observe("latency", False) is False and rule.streak("latency") == 0
    assert rule.observe("data_drift", True) is True  # unlisted: one window
    assert rule.windows_needed("latency:p99") == 3  # a qualified key falls back to its kind


def test_freshness_and_missing_rows() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert check_freshness("t", now - timedelta(hours=2), now, 3600).stale
    assert not check_freshness("t", now - timedelta(minutes=5), now, 3600).stale
    assert check_freshness("t", None, now, 3600).stale
    assert check_missing_rows(900, 1000).missing  # 10% short, beyond noise
    assert not check_missing_rows(960, 1000).missing  # 4% short: within tolerance
    assert not check_missing_rows(8, 10).missing  # 20% short but within counting noise
    assert check_missing_rows(9_400, 10_000).missing


# -- performance -----------------------------------------------------------------------


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
