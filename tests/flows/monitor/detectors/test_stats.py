"""The drift statistics against scipy and known values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flows.monitor.detectors import _stats


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
