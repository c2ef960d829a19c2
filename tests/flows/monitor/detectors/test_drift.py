"""Drift between a reference and a current window, on constructed data where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flows.monitor.detectors import DriftThresholds, ReferenceProfile, compare


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


# -- calibrated alarms ----------------------------------------------------------
def _seasonal(batches: int, rows: int, seed: int, amplitude: float = 0.6) -> pd.DataFrame:
    """Batches whose mean follows a yearly cycle (6 batches a year), oldest first."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(batches):
        season = amplitude * np.sin(2 * np.pi * k / 6)
        parts.append(pd.DataFrame({"temp": rng.normal(season, 1.0, rows), "_batch_id": k}))
    return pd.concat(parts, ignore_index=True)


def test_seasonal_variation_the_reference_shows_does_not_alarm_but_an_uncalibrated_test_does() -> None:
    reference = _seasonal(6, 800, seed=1)
    # The next season's batch: within the cycle the reference went through.
    current = _seasonal(8, 800, seed=2).query("_batch_id == 7").drop(columns="_batch_id")

    calibrated = compare(reference, current, DriftThresholds())
    plain = compare(reference, current, DriftThresholds(calibration_chunks=0))

    assert plain.drifted, "without calibration this natural variation is taken for drift"
    assert not calibrated.drifted
    assert calibrated.features["temp"].effect_threshold > DriftThresholds().numeric_effect_floor


def test_a_change_beyond_the_references_own_variation_still_alarms() -> None:
    reference = _seasonal(6, 800, seed=1)
    current = pd.DataFrame({"temp": np.random.default_rng(3).normal(2.0, 1.0, 800)})

    report = compare(reference, current, DriftThresholds())

    assert report.drifted and report.features["temp"].effect_size > report.features["temp"].effect_threshold


def test_an_unchanging_reference_calibrates_near_the_floor() -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"x": rng.normal(size=6000), "c": rng.choice(list("abc"), 6000)})

    limits = ReferenceProfile.from_data(reference).effect_limits

    assert set(limits) == {"x", "c"}
    assert limits["x"] < 2 * DriftThresholds().numeric_effect_floor
    assert limits["c"] < DriftThresholds().categorical_effect_floor
    # Too few rows per chunk: not calibrated, the floor alone applies.
    assert ReferenceProfile.from_data(reference.head(300)).effect_limits == {}
