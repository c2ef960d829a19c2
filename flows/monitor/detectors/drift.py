"""Data drift: does the current window look like the reference, feature by feature?

Numeric features get the two-sample Kolmogorov-Smirnov test, the Wasserstein
distance in reference standard deviations (the effect size) and PSI on the
reference deciles; categorical features get Pearson's chi-square, the
Jensen-Shannon distance (the effect size) and PSI on the categories. A feature
drifts when its test survives the multiple-testing correction across features
**and** its effect size clears a floor: the floor keeps 0.02-sigma shifts quiet
at a million rows, the correction keeps twenty features from crying wolf. Each
feature also reports its missing share and its share of unseen categories.

Example:
    >>> report = compare(reference_df, current_df, DriftThresholds())
    >>> report.drifted, report.drift_share
    (True, 0.05)
    >>> f = report.features["amount"]
    >>> f.statistic, f.p_value, f.effect_size, f.drifted
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.monitor.detectors import _stats
from flows.monitor.detectors._stats import FloatArray
from flows.monitor.detectors.thresholds import DriftThresholds
from flows.monitor.signals import jsonable

logger = logging.getLogger(__name__)

ColumnKind = Literal["numeric", "categorical"]
Severity = Literal["none", "warning", "critical"]
_THREADS = 2  # numpy releases the GIL in sort/searchsorted; two cores is the target machine
_PARALLEL_ROWS = 20_000
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class NumericSample:
    """One side of a numeric feature: its sorted finite values (maybe a subsample).

    Attributes:
        values: sorted finite values tested.
        rows: rows in the column, missing included.
        missing: null, NaN or infinite values among ``rows``.
    """

    values: FloatArray
    rows: int
    missing: int

    @property
    def missing_share(self) -> float:
        return self.missing / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class CategoricalSample:
    """One side of a categorical feature: counts per category (as strings).

    Attributes:
        counts: category -> rows; nulls are not a category.
        rows: rows in the column, missing included.
        missing: null rows.
    """

    counts: Mapping[str, int]
    rows: int
    missing: int

    @property
    def missing_share(self) -> float:
        return self.missing / self.rows if self.rows else 0.0


Sample = NumericSample | CategoricalSample


@dataclass(frozen=True)
class ReferenceProfile:
    """A reference prepared once (sorted, counted) and compared against many windows.

    Example:
        >>> profile = ReferenceProfile.from_data(silver_df)
        >>> for window in windows:
        ...     report = compare(profile, window)
    """

    columns: Mapping[str, Sample]
    rows: int
    thresholds: DriftThresholds
    effect_limits: Mapping[str, float] = field(default_factory=dict)
    """Feature -> the effect size its own chunks reach (calibrated alarms); empty when
    the reference is too small to calibrate."""

    @classmethod
    def from_data(
        cls, data: Any, thresholds: DriftThresholds | None = None, columns: Sequence[str] | None = None
    ) -> ReferenceProfile:
        """Profile ``data`` (a ``pyarrow.Table`` or ``pandas.DataFrame``), rows in landing order.

        Args:
            data: the reference rows, oldest first (a ``_batch_id`` column, when there
                is one, orders them for calibration).
            thresholds: sampling and calibration settings.
            columns: columns to keep; default every numeric or categorical column
                whose name does not start with ``_`` (lineage and serving metadata).
        """
        t = thresholds or DriftThresholds()
        table = _Table(data)
        names = list(columns) if columns is not None else [c for c in table.names if not c.startswith("_")]
        samples = _samples(table, names, t)
        return cls(samples, table.rows, t, _calibrate(table, samples, t))


@dataclass(frozen=True)
class FeatureDrift:
    """The verdict on one feature.

    Attributes:
        name: the column.
        kind: ``numeric`` or ``categorical``.
        test: ``ks`` or ``chi2`` (``none`` when not tested; see ``note``).
        statistic: KS D or the chi-square statistic.
        p_value: the test's p-value.
        p_adjusted: after the correction across features (what ``alpha`` is compared with).
        effect_size: Wasserstein / reference std (numeric) or Jensen-Shannon distance.
        effect_measure: ``wasserstein_std`` or ``jensen_shannon``.
        psi: population stability index (reference deciles or categories).
        n_reference: values tested on the reference side.
        n_current: values tested on the current side.
        missing_share_reference: null/NaN/inf share in the reference.
        missing_share_current: the same in the current window.
        new_category_share: share of current rows in categories the reference never had.
        effect_threshold: the effect size it had to reach: the floor, or the reference's
            own calibrated chunk-to-chunk bound when that is higher.
        drifted: significant after correction and effect at or above ``effect_threshold``.
        severity: ``none``, ``warning``, or ``critical`` (effect twice the floor or PSI critical).
        note: why a feature was not tested, if it was not.
    """

    name: str
    kind: ColumnKind
    test: Literal["ks", "chi2", "none"]
    statistic: float
    p_value: float
    p_adjusted: float
    effect_size: float
    effect_measure: Literal["wasserstein_std", "jensen_shannon"]
    psi: float
    n_reference: int
    n_current: int
    missing_share_reference: float
    missing_share_current: float
    new_category_share: float = 0.0
    effect_threshold: float = 0.0
    drifted: bool = False
    severity: Severity = "none"
    note: str | None = None

    @property
    def missing_share_change(self) -> float:
        """Current minus reference missing share."""
        return self.missing_share_current - self.missing_share_reference


@dataclass(frozen=True)
class QualityIssue:
    """A data-quality finding next to the drift tests.

    Attributes:
        feature: the column.
        issue: ``missing_share``, ``new_category``, ``missing_column`` or ``type_changed``.
        value: the measured value (share, or 1.0 for a missing column).
        threshold: the threshold it crossed.
    """

    feature: str
    issue: Literal["missing_share", "new_category", "missing_column", "type_changed"]
    value: float
    threshold: float


@dataclass(frozen=True)
class DriftReport:
    """The result of ``compare``: per-feature verdicts and the dataset verdict.

    Attributes:
        features: column -> ``FeatureDrift``.
        drifted: at least one feature drifted and the drifted share reached
            ``dataset_drift_share``.
        drift_share: drifted features / tested features.
        rows_reference: rows in the reference.
        rows_current: rows in the current window.
        quality_issues: missing-share rises, unseen categories, missing columns.
        thresholds: the thresholds applied.
    """

    features: Mapping[str, FeatureDrift]
    drifted: bool
    drift_share: float
    rows_reference: int
    rows_current: int
    quality_issues: tuple[QualityIssue, ...] = ()
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def drifted_features(self) -> list[str]:
        """Names of drifted features, largest effect first."""
        hits = [f for f in self.features.values() if f.drifted]
        return [f.name for f in sorted(hits, key=lambda f: -f.effect_size)]

    @property
    def severity(self) -> Severity:
        """``critical`` if any drifted feature is critical or half of them drifted."""
        if not self.drifted:
            return "none"
        if self.drift_share >= 0.5 or any(f.severity == "critical" for f in self.features.values()):
            return "critical"
        return "warning"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (non-finite floats become None)."""
        out: dict[str, Any] = jsonable(
            {
                "drifted": self.drifted,
                "drift_share": self.drift_share,
                "severity": self.severity,
                "rows_reference": self.rows_reference,
                "rows_current": self.rows_current,
                "features": {name: asdict(f) for name, f in self.features.items()},
                "quality_issues": [asdict(q) for q in self.quality_issues],
            }
        )
        return out


def compare(
    reference: Any,
    current: Any,
    thresholds: DriftThresholds | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> DriftReport:
    """Compare ``current`` with ``reference`` feature by feature.

    Args:
        reference: a ``ReferenceProfile``, ``pyarrow.Table`` or ``pandas.DataFrame``.
        current: a ``pyarrow.Table`` or ``pandas.DataFrame``.
        thresholds: the gates (defaults: ``DriftThresholds()``).
        columns: the features to compare; default every profiled reference column.

    Returns:
        The ``DriftReport``. Columns of the reference missing from ``current`` are
        reported as quality issues, not tested.

    Example:
        >>> report = compare(silver, window, DriftThresholds(alpha=0.01))
        >>> report.features["amount"].drifted
    """
    t = thresholds or DriftThresholds()
    profile = (
        reference if isinstance(reference, ReferenceProfile) else ReferenceProfile.from_data(reference, t, columns)
    )
    names = [c for c in (columns if columns is not None else profile.columns) if c in profile.columns]
    table = _Table(current)
    present = [c for c in names if c in table.names]
    issues = [QualityIssue(c, "missing_column", 1.0, 0.0) for c in names if c not in table.names]
    cur = _samples(table, present, t)
    pairs = []
    for name in present:
        ref_side, cur_side = profile.columns[name], cur.get(name)
        if cur_side is None or type(ref_side) is not type(cur_side):
            issues.append(QualityIssue(name, "type_changed", 1.0, 0.0))
            continue
        pairs.append((name, ref_side, cur_side))
    raw = _parallel(lambda p: _feature(p[0], p[1], p[2], t), pairs, heavy=table.rows >= _PARALLEL_ROWS)
    features = _decide(raw, t, profile.effect_limits)
    issues.extend(_quality(features.values(), t))
    tested = [f for f in features.values() if f.test != "none"]
    n_drifted = sum(f.drifted for f in tested)
    share = n_drifted / len(tested) if tested else 0.0
    drifted = n_drifted > 0 and share >= t.dataset_drift_share
    return DriftReport(features, drifted, share, profile.rows, table.rows, tuple(issues), t)


# -- input --------------------------------------------------------------------
class _Table:
    """Uniform column access over pyarrow tables and pandas frames."""

    def __init__(self, data: Any) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            self._arrow: pa.Table | None = data
            self._frame: Any = None
            self.names: list[str] = list(data.column_names)
            self.rows: int = data.num_rows
        elif type(data).__module__.startswith("pandas"):
            self._arrow, self._frame = None, data
            self.names = [str(c) for c in data.columns]
            self.rows = len(data)
        else:
            raise TypeError(f"expected a pyarrow.Table or pandas.DataFrame, got {type(data).__name__}")

    def kind(self, name: str) -> ColumnKind | None:
        if self._arrow is not None:
            typ = self._arrow.schema.field(name).type
            if pa.types.is_boolean(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ):
                return "categorical"
            if pa.types.is_dictionary(typ):
                return "categorical"
            if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
                return "numeric"
            return None

        series = self._frame[name]
        if pd.api.types.is_bool_dtype(series.dtype):
            return "categorical"
        if pd.api.types.is_numeric_dtype(series.dtype):
            return "numeric"
        if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(series.dtype):
            return "categorical"
        return None

    def floats(self, name: str) -> FloatArray:
        if self._arrow is not None:
            col = self._arrow.column(name)
            if pa.types.is_decimal(col.type):
                col = col.cast(pa.float64())
            return np.asarray(col.to_numpy(), dtype=np.float64)
        return np.asarray(self._frame[name].to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)

    def arrow(self, name: str) -> pa.ChunkedArray:
        if self._arrow is not None:
            return self._arrow.column(name)
        arr = pa.array(self._frame[name], from_pandas=True)
        return pa.chunked_array([arr])


def _row_sample(rows: int, t: DriftThresholds) -> np.ndarray[Any, np.dtype[np.intp]] | None:
    if rows <= t.max_sample_size:
        return None
    rng = np.random.default_rng(t.seed)
    return np.sort(rng.choice(rows, size=t.max_sample_size, replace=False))


def _numeric(values: FloatArray, rows_idx: np.ndarray[Any, np.dtype[np.intp]] | None) -> NumericSample:
    finite = np.isfinite(values)
    missing = int(values.size - np.count_nonzero(finite))
    sample = values[rows_idx] if rows_idx is not None else values
    if missing:
        sample = sample[np.isfinite(sample)]
    return NumericSample(np.sort(sample), int(values.size), missing)


def _categorical(column: pa.ChunkedArray) -> CategoricalSample:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    counts: dict[str, int] = {}
    if column.length() - column.null_count > 0:
        vc = pc.value_counts(column)
        for value, count in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True):
            if value is not None:
                counts[str(value)] = counts.get(str(value), 0) + int(count)
    return CategoricalSample(counts, int(column.length()), int(column.null_count))


def _samples(table: _Table, names: Sequence[str], t: DriftThresholds) -> dict[str, Sample]:
    idx = _row_sample(table.rows, t)
    kinds = {name: table.kind(name) for name in names}

    def one(name: str) -> Sample:
        if kinds[name] == "numeric":
            return _numeric(table.floats(name), idx)
        return _categorical(table.arrow(name))

    wanted = [n for n in names if kinds[n] is not None]
    return dict(zip(wanted, _parallel(one, wanted, heavy=table.rows >= _PARALLEL_ROWS), strict=True))


def _parallel(func: Callable[[_T], _R], items: Sequence[_T], *, heavy: bool) -> list[_R]:
    """``map`` over threads when the arrays are big enough for numpy to release the GIL usefully."""
    if heavy and len(items) > 1:
        with ThreadPoolExecutor(_THREADS) as pool:
            return list(pool.map(func, items))
    return [func(item) for item in items]


# -- per feature --------------------------------------------------------------
def _feature(name: str, ref: Sample, cur: Sample, t: DriftThresholds) -> FeatureDrift:
    if isinstance(ref, NumericSample) and isinstance(cur, NumericSample):
        return _numeric_feature(name, ref, cur, t)
    assert isinstance(ref, CategoricalSample) and isinstance(cur, CategoricalSample)
    return _categorical_feature(name, ref, cur, t)


def _numeric_feature(name: str, ref: NumericSample, cur: NumericSample, t: DriftThresholds) -> FeatureDrift:
    r, c = ref.values, cur.values
    base: dict[str, Any] = {
        "name": name,
        "kind": "numeric",
        "effect_measure": "wasserstein_std",
        "n_reference": int(r.size),
        "n_current": int(c.size),
        "missing_share_reference": ref.missing_share,
        "missing_share_current": cur.missing_share,
    }
    if r.size < t.min_samples or c.size < t.min_samples:
        note = f"fewer than {t.min_samples} non-missing values (reference {r.size}, current {c.size})"
        return FeatureDrift(
            test="none", statistic=0.0, p_value=1.0, p_adjusted=1.0, effect_size=0.0, psi=0.0, note=note, **base
        )
    d, w = _stats.ks_wasserstein(r, c)
    p = _stats.ks_pvalue(d, r, c)
    scale = _scale(r)
    ref_bins, cur_bins = _stats.quantile_bin_counts(r, c, t.psi_bins)
    return FeatureDrift(
        test="ks",
        statistic=d,
        p_value=p,
        p_adjusted=p,
        effect_size=w / scale,
        psi=_stats.psi(ref_bins, cur_bins),
        **base,
    )


def _categorical_feature(name: str, ref: CategoricalSample, cur: CategoricalSample, t: DriftThresholds) -> FeatureDrift:
    a, b = _aligned(ref, cur)
    n_ref, n_cur = int(a.sum()), int(b.sum())
    new_share = float(b[a == 0].sum() / n_cur) if n_cur else 0.0
    base: dict[str, Any] = {
        "name": name,
        "kind": "categorical",
        "effect_measure": "jensen_shannon",
        "n_reference": n_ref,
        "n_current": n_cur,
        "missing_share_reference": ref.missing_share,
        "missing_share_current": cur.missing_share,
        "new_category_share": new_share,
    }
    if n_ref < t.min_samples or n_cur < t.min_samples:
        note = f"fewer than {t.min_samples} non-missing values (reference {n_ref}, current {n_cur})"
        return FeatureDrift(
            test="none", statistic=0.0, p_value=1.0, p_adjusted=1.0, effect_size=0.0, psi=0.0, note=note, **base
        )
    stat, p = _stats.chi2_homogeneity(a, b)
    return FeatureDrift(
        test="chi2",
        statistic=stat,
        p_value=p,
        p_adjusted=p,
        effect_size=_stats.jensen_shannon(a, b),
        psi=_stats.psi(a, b),
        **base,
    )


def _scale(r: FloatArray) -> float:
    """What a numeric effect is measured in: the reference's standard deviation (else |mean|, else 1)."""
    std, mean = float(np.std(r)), float(np.mean(r))
    return std if std > 0 else (abs(mean) if mean != 0 else 1.0)


def _aligned(ref: CategoricalSample, cur: CategoricalSample) -> tuple[FloatArray, FloatArray]:
    """Both sides' counts over the union of their categories, in one order."""
    cats = sorted(set(ref.counts) | set(cur.counts))
    a = np.array([ref.counts.get(k, 0) for k in cats], dtype=np.float64)
    b = np.array([cur.counts.get(k, 0) for k in cats], dtype=np.float64)
    return a, b


def _decide(raw: list[FeatureDrift], t: DriftThresholds, limits: Mapping[str, float]) -> dict[str, FeatureDrift]:
    tested = [f for f in raw if f.test != "none"]
    corrected = _stats.adjust_pvalues([f.p_value for f in tested], t.correction)
    adjusted = dict(zip((f.name for f in tested), corrected, strict=True))
    out: dict[str, FeatureDrift] = {}
    for f in raw:
        if f.test == "none":
            out[f.name] = f
            continue
        floor = t.numeric_effect_floor if f.kind == "numeric" else t.categorical_effect_floor
        floor = max(floor, limits.get(f.name, 0.0))
        p_adj = adjusted[f.name]
        drifted = p_adj < t.alpha and f.effect_size >= floor
        severity: Severity = "none"
        if drifted:
            big = f.effect_size >= 2 * floor or f.psi >= t.psi_critical
            severity = "critical" if big else "warning"
        out[f.name] = replace(f, p_adjusted=p_adj, drifted=drifted, severity=severity, effect_threshold=floor)
    return out


# -- calibration --------------------------------------------------------------
def _calibrate(table: _Table, samples: Mapping[str, Sample], t: DriftThresholds) -> dict[str, float]:
    """Per feature: mean + k std of the effect sizes of the reference's consecutive chunks against it."""
    if t.calibration_chunks < 2 or table.rows < t.calibration_chunks * t.calibration_min_rows:
        return {}
    order = _landing_order(table)
    bounds = np.linspace(0, table.rows, t.calibration_chunks + 1).astype(int)
    chunks = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    limits: dict[str, float] = {}
    for name, whole in samples.items():
        column = table.floats(name) if isinstance(whole, NumericSample) else table.arrow(name)
        effects = [_chunk_effect(column, whole, rows, t) for rows in chunks]
        found = [e for e in effects if e is not None]
        if len(found) >= 2:
            limits[name] = float(np.mean(found) + t.calibration_sigmas * np.std(found, ddof=1))
    return limits


def _landing_order(table: _Table) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Row positions oldest first: by ``_batch_id`` (stable) when the rows carry it, else as given."""
    if "_batch_id" not in table.names:
        return np.arange(table.rows)
    batch = table.floats("_batch_id")
    return np.argsort(np.nan_to_num(batch, nan=-1.0), kind="stable")


def _chunk_effect(
    column: FloatArray | pa.ChunkedArray, whole: Sample, rows: np.ndarray[Any, np.dtype[np.intp]], t: DriftThresholds
) -> float | None:
    """One chunk's effect size against the whole reference (None: too few values to measure)."""
    if isinstance(whole, NumericSample):
        assert isinstance(column, np.ndarray)
        values = column[rows]
        part = np.sort(values[np.isfinite(values)])
        if part.size < t.min_samples or whole.values.size < t.min_samples:
            return None
        # The effect size only: no test, no PSI (the chunk is part of the reference).
        return _stats.ks_wasserstein(whole.values, part)[1] / _scale(whole.values)
    assert isinstance(column, pa.ChunkedArray)
    part_counts = _categorical(column.take(pa.array(rows)))
    if sum(part_counts.counts.values()) < t.min_samples:
        return None
    return _stats.jensen_shannon(*_aligned(whole, part_counts))


def _quality(features: Any, t: DriftThresholds) -> list[QualityIssue]:
    issues = []
    for f in features:
        if f.missing_share_change >= t.missing_share_change and f.missing_share_change > 0:
            issues.append(QualityIssue(f.name, "missing_share", f.missing_share_change, t.missing_share_change))
        if f.kind == "categorical" and f.new_category_share >= t.new_category_share and f.new_category_share > 0:
            issues.append(QualityIssue(f.name, "new_category", f.new_category_share, t.new_category_share))
    return issues
