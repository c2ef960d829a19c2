"""The statistics behind ``compare``: exact, vectorized, on sorted samples.

Every function takes already sorted, finite ``float64`` arrays (sorting is the
expensive part and is done once per sample), so the two-sample KS statistic and
the Wasserstein distance cost one or two ``searchsorted`` calls each.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import NDArray

# scipy is imported by the p-values, on first use (scipy.stats costs 1.4 s of imports,
# scipy.special 0.3 s): a monitor pass without a drift window never loads it. chi2.sf
# and kstwobign.sf are scipy.special's chdtrc and kolmogorov (what they call), so the
# large-sample and categorical tests need only scipy.special.

FloatArray = NDArray[np.float64]

_PSI_EPS = 1e-4
_KSTWO_MAX_N = 2000


def _has_ties(r: FloatArray, c: FloatArray, pos: NDArray[np.intp]) -> bool:
    if r.size > 1 and bool(np.any(r[1:] == r[:-1])):
        return True
    if c.size > 1 and bool(np.any(c[1:] == c[:-1])):
        return True
    inside = pos > 0
    return bool(np.any(r[np.maximum(pos - 1, 0)][inside] == c[inside]))


def ks_wasserstein(r: FloatArray, c: FloatArray) -> tuple[float, float]:
    """Two-sample KS statistic and Wasserstein-1 distance of two sorted samples.

    Both are exact (the same values as ``scipy.stats.ks_2samp`` and
    ``scipy.stats.wasserstein_distance``). Without ties a single merge by
    ``searchsorted`` gives both; with ties the step functions are evaluated on the
    union of distinct values.

    Example:
        >>> ks_wasserstein(np.array([0.0, 1.0]), np.array([0.5, 1.5]))
        (0.5, 0.5)
    """
    n, m = r.size, c.size
    pos = np.searchsorted(r, c, side="right")
    if _has_ties(r, c, pos):
        return _ks_wasserstein_ties(r, c)
    j = np.arange(m, dtype=np.float64)
    pos_f = pos.astype(np.float64)
    # F_cur - F_ref peaks at a current point; F_ref - F_cur just before one.
    d = max(float(np.max((j + 1.0) / m - pos_f / n)), float(np.max(pos_f / n - j / m)), 0.0)
    if n == m:  # equal sizes: W is the mean gap between matching order statistics
        return d, float(np.mean(np.abs(r - c)))
    posr = np.searchsorted(c, r, side="left")
    i = np.arange(n)
    merged = np.empty(n + m)
    gap = np.empty(n + m)  # F_ref - F_cur right after each merged point
    at_c = pos + np.arange(m)
    at_r = i + posr
    merged[at_c] = c
    merged[at_r] = r
    gap[at_c] = pos_f / n - (j + 1.0) / m
    gap[at_r] = (i + 1.0) / n - posr / m
    w = float(np.dot(np.abs(gap[:-1]), np.diff(merged)))
    return d, w


def _ks_wasserstein_ties(r: FloatArray, c: FloatArray) -> tuple[float, float]:
    values = np.union1d(r, c)
    gap = np.searchsorted(r, values, side="right") / r.size - np.searchsorted(c, values, side="right") / c.size
    d = float(np.max(np.abs(gap)))
    w = float(np.dot(np.abs(gap[:-1]), np.diff(values)))
    return d, w


def ks_pvalue(d: float, r: FloatArray, c: FloatArray) -> float:
    """Two-sided p-value of the two-sample KS statistic ``d`` of samples ``r`` and ``c``.

    Small samples (``n * m <= 10_000``) get scipy's exact distribution. Otherwise
    Smirnov's asymptotic form at the effective size ``en = n*m/(n+m)``: the
    finite-n Kolmogorov distribution (as ``scipy.stats.ks_2samp(method="asymp")``)
    up to ``en = 2000``; above it that costs O(en) (0.6 s at en = 500k), so the
    limit distribution with Stephens' finite-n correction is used, which agrees
    with it to within 1% (relative) from en = 5000 on.
    """
    n, m = r.size, c.size
    if d <= 0.0:
        return 1.0
    if n * m <= 10_000:
        from scipy import stats

        with warnings.catch_warnings():  # scipy falls back to asymp itself when exact fails
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(stats.ks_2samp(r, c, method="exact").pvalue)
    en = n * m / (n + m)
    if en <= _KSTWO_MAX_N:
        from scipy import stats

        return float(np.clip(stats.kstwo.sf(d, round(en)), 0.0, 1.0))
    from scipy import special

    root = math.sqrt(en)
    return float(np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * d), 0.0, 1.0))


def psi(ref_counts: NDArray[np.float64], cur_counts: NDArray[np.float64]) -> float:
    """Population stability index of two count vectors over the same bins.

    Empty bins are clipped to a share of 1e-4 so a category or bin that appears
    on one side only gives a large, finite value.
    """
    p = np.clip(ref_counts / max(ref_counts.sum(), 1.0), _PSI_EPS, None)
    q = np.clip(cur_counts / max(cur_counts.sum(), 1.0), _PSI_EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def quantile_bin_counts(r: FloatArray, c: FloatArray, bins: int) -> tuple[FloatArray, FloatArray]:
    """Counts of both sorted samples in the reference's quantile bins (open-ended ends)."""
    n = r.size
    edges = np.unique(r[np.minimum((np.arange(1, bins) * n) // bins, n - 1)])
    cum_r = np.concatenate(([0], np.searchsorted(r, edges, side="right"), [n]))
    cum_c = np.concatenate(([0], np.searchsorted(c, edges, side="right"), [c.size]))
    return np.diff(cum_r).astype(np.float64), np.diff(cum_c).astype(np.float64)


def chi2_homogeneity(ref_counts: FloatArray, cur_counts: FloatArray) -> tuple[float, float]:
    """Pearson chi-square test that two count vectors come from one distribution.

    Returns the statistic and its p-value (1.0 when fewer than two categories occur).
    """
    keep = (ref_counts + cur_counts) > 0
    a, b = ref_counts[keep], cur_counts[keep]
    if a.size < 2 or a.sum() == 0 or b.sum() == 0:
        return 0.0, 1.0
    total = a.sum() + b.sum()
    col = a + b
    exp_a = col * a.sum() / total
    exp_b = col * b.sum() / total
    stat = float(np.sum((a - exp_a) ** 2 / exp_a) + np.sum((b - exp_b) ** 2 / exp_b))
    from scipy import special

    return stat, float(special.chdtrc(a.size - 1, stat))


def jensen_shannon(ref_counts: FloatArray, cur_counts: FloatArray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    p = ref_counts / max(ref_counts.sum(), 1.0)
    q = cur_counts / max(cur_counts.sum(), 1.0)
    mid = (p + q) / 2

    def kl(a: FloatArray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def adjust_pvalues(pvalues: list[float], method: str) -> list[float]:
    """Multiple-testing adjusted p-values (Holm, Bonferroni, Benjamini-Hochberg or none).

    Example:
        >>> adjust_pvalues([0.01, 0.04, 0.03], "holm")
        [0.03, 0.06, 0.06]
    """
    k = len(pvalues)
    if k == 0 or method == "none":
        return list(pvalues)
    p = np.asarray(pvalues, dtype=np.float64)
    if method == "bonferroni":
        return [float(v) for v in np.minimum(1.0, p * k)]
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((k - np.arange(k)) * ranked)
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((k / np.arange(1, k + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    out = np.empty(k)
    out[order] = np.minimum(1.0, adj)
    return [float(v) for v in out]
