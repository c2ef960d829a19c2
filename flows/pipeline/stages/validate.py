"""Validate: every data expectation of a batch, checked at once, with pandera.

Why pandera and not Great Expectations: it is light (no context, stores or
rendered docs to set up), runs in-process on the DataFrame we already hold, is
pandas-native (dtypes, nullable extension types), and with ``lazy=True`` it
collects *every* failed expectation; ``SchemaErrors.failure_cases`` is a plain
DataFrame (column, check, failure case, row index) that we turn into JSON-able
records and keep with the quarantine record.

``validate_batch`` is a pure function: a DataFrame and the config in, a
``ValidationOutcome`` out; no I/O. It builds one ``DataFrameSchema`` from
``cfg.data`` (target, task, time and id columns), ``cfg.data.expectations`` and the
locked feature schema (``{column: "float64" | "int64" | "string" | "bool"}``; when
None it is inferred from this batch and returned, so the caller can lock it).

The rules:

====================================  ==================================================
What the batch shows                  Decision
====================================  ==================================================
extra (unexpected) column             accepted; column dropped; noted
missing or renamed column             quarantine (a rename shows as missing + unexpected)
wrong dtype (text in a number         quarantine; lossless coercions are applied first:
column, fractions in an int column)   int->float, integral float->int, int->string, 0/1->bool
+/-inf in a float column              counted as null (set to NaN) and noted; then the
                                      null rule below decides
null fraction > max_null_fraction     quarantine (per column, labels included)
all-null column                       quarantine, whatever max_null_fraction says
value outside ``ranges``              quarantine
value outside ``value_sets``          quarantine
fewer rows than ``min_rows``          quarantine
identical rows, ``duplicates=keep``  accepted as they are (default without id columns)
identical rows, ``duplicates=drop``  accepted; duplicates dropped (first kept); counted
identical rows,                      <= max_duplicate_fraction: accepted, duplicates
``duplicates=quarantine`` (default   dropped (first kept), counted; more: quarantine
with id columns)
label column missing                  quarantine (unless ``require_label=False``)
null labels <= max_null_fraction      accepted; those rows dropped; noted
label not in ``label_values``         quarantine; without ``label_values``: not in the
(unseen class)                        locked classes (``known_labels``), and for binary
                                      never more than two classes in all
time / id column null or unparseable  quarantine
names equal but for case (a / A)      quarantine (a Delta table's names are case-insensitive)
====================================  ==================================================

Timestamps are never features: the configured ``time_column`` and any other column
holding datetimes are carried through as ``datetime64[us, UTC]`` and left out of the
feature schema (a locked schema that lists one is ignored for it). Id columns are
carried as strings. Accepted data comes back with the schema's dtypes (``int64``
columns that still hold nulls as pandas' nullable ``Int64``: same Arrow type),
columns in the order ids, time, features, target, and a fresh index.

Example:
    >>> outcome = validate_batch(frame, cfg, schema=None)
    >>> if outcome.accepted:
    ...     lake.append("bronze", outcome.data, key=sha256)
    ... else:
    ...     lake.quarantine(raw, source, outcome.reason, outcome.failures)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api import types as ptypes
from pandera.errors import SchemaErrors

from flows.config import ConfigError, DataConfig, DuplicateHandling, Expectations, SelfhealConfig
from flows.pipeline.exceptions import ValidationFailed

logger = logging.getLogger(__name__)

#: Failure records kept per batch (every failed expectation keeps at least one).
MAX_FAILURE_RECORDS = 200
FEATURE_DTYPES = ("float64", "int64", "string", "bool")
STRING = pd.StringDtype(na_value=np.nan)
"""pandas 3's default ``str`` dtype (NaN for missing)."""
TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")
_VALIDATED_DTYPES: dict[str, Any] = {"float64": "float64", "int64": "Int64", "string": STRING, "bool": "boolean"}
_NUMERIC_OBJECT_KINDS = ("floating", "integer", "mixed-integer-float", "decimal")
_Observed = dict[tuple[str | None, str], Any]


@dataclass(frozen=True, eq=False)
class ValidationOutcome:
    """What the validate stage decided about one batch.

    Attributes:
        accepted: True when the batch may land.
        data: the validated rows (None when refused): extra columns, dropped duplicate rows and
            rows with a null label removed, dtypes as the schema says.
        schema: the feature schema used (the locked one, or inferred from this batch).
        failures: JSON-able failure records (``column``, ``check``, ``failure_case``,
            ``index`` = row position in the file), at most ``MAX_FAILURE_RECORDS``.
        reason: one line a person can act on ("" when accepted).
        notes: what was tolerated and changed (dropped columns or rows, inf values).
        failure_count: every failure case found, before the cap.
        labels: the label classes to lock (classification only; None otherwise).
        rows_in: rows in the batch as read.
        dropped: rows removed from an accepted batch, by cause (``duplicates``, ``null_label``).

    Example:
        >>> outcome.rows_in == outcome.rows_out + sum(outcome.dropped.values())
        True
    """

    accepted: bool
    data: pd.DataFrame | None = field(repr=False)
    schema: dict[str, str]
    failures: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    failure_count: int = 0
    labels: list[Any] | None = None
    rows_in: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def rows_out(self) -> int:
        """Rows that land (0 when refused)."""
        return 0 if self.data is None else len(self.data)

    def raise_if_rejected(self) -> None:
        """Raise ``ValidationFailed`` with the reason when the batch was refused."""
        if not self.accepted:
            raise ValidationFailed(self.reason)


@dataclass
class _Columns:
    """The batch's columns sorted by role, before any check runs."""

    ids: list[str]
    times: list[str]
    features: dict[str, str]
    target: str | None
    extra: list[str]
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expected(self) -> list[str]:
        return [*self.ids, *self.times, *self.features, *([self.target] if self.target else [])]


# -- inference and coercion -----------------------------------------------------------
def _is_object(series: pd.Series) -> bool:
    return isinstance(series.dtype, np.dtype) and series.dtype.kind == "O"


def _object_kind(series: pd.Series) -> str:
    return str(pd.api.types.infer_dtype(series, skipna=True))


def _dtype_name(series: pd.Series) -> str | None:
    """The feature dtype a column holds, or None when none fits (e.g. datetimes)."""
    dtype = series.dtype
    if _is_object(series):
        kind = _object_kind(series)
        return {
            "string": "string",
            "empty": "string",
            "boolean": "bool",
            "integer": "int64",
            "floating": "float64",
            "mixed-integer-float": "float64",
        }.get(kind)
    if ptypes.is_bool_dtype(dtype):
        return "bool"
    if ptypes.is_integer_dtype(dtype):
        return "int64"
    if ptypes.is_float_dtype(dtype):
        return "float64"
    if isinstance(dtype, pd.CategoricalDtype) or ptypes.is_string_dtype(dtype):
        return "string"
    return None


def infer_schema(frame: pd.DataFrame, cfg: SelfhealConfig | DataConfig) -> dict[str, str]:
    """The feature schema a batch implies (target, id and time columns left out).

    Raises:
        ValueError: a column holds a dtype no feature may have; the message names it.
    """
    data = cfg.data if isinstance(cfg, SelfhealConfig) else cfg
    columns = _sort_columns(frame, data, None, require_label=False)
    if columns.failures:
        bad = ", ".join(f"{f['column']} ({f['failure_case']})" for f in columns.failures)
        raise ValueError(f"columns with no supported feature dtype {FEATURE_DTYPES}: {bad}")
    return columns.features


def _sort_columns(
    frame: pd.DataFrame, data: DataConfig, schema: Mapping[str, str] | None, require_label: bool
) -> _Columns:
    times = [data.time_column] if data.time_column else []
    reserved = {*data.id_columns, *times, data.target}
    times += [c for c in frame.columns if c not in reserved and ptypes.is_datetime64_any_dtype(frame[c].dtype)]
    reserved.update(times)
    failures: list[dict[str, Any]] = []
    if schema is None:
        features: dict[str, str] = {}
        for column in frame.columns:
            if column in reserved:
                continue
            name = _dtype_name(frame[column])
            if name is None:
                failures.append(_record(column, "supported_dtype", str(frame[column].dtype)))
            else:
                features[column] = name
    else:
        unknown = {c: d for c, d in schema.items() if d not in FEATURE_DTYPES}
        if unknown:
            raise ValueError(f"locked schema has unknown dtypes {unknown}; allowed: {FEATURE_DTYPES}")
        features = {c: d for c, d in schema.items() if c not in reserved}
    target = data.target if require_label or data.target in frame.columns else None
    known = {*data.id_columns, *times, *features, data.target}
    extra = [c for c in frame.columns if c not in known and not any(f["column"] == c for f in failures)]
    return _Columns(list(data.id_columns), times, features, target, extra, failures)


def _inf_to_null(series: pd.Series) -> tuple[pd.Series, int]:
    if series.dtype.kind != "f":
        return series, 0
    infinite = np.isinf(series.to_numpy())
    count = int(infinite.sum())
    return (series.mask(infinite), count) if count else (series, 0)


def _as_float(series: pd.Series) -> pd.Series:
    return pd.Series(series.to_numpy(dtype="float64", na_value=np.nan), index=series.index, name=series.name)


def _is_numeric(series: pd.Series) -> bool:
    if _is_object(series):
        return _object_kind(series) in _NUMERIC_OBJECT_KINDS
    return ptypes.is_numeric_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype)


def _coerce(series: pd.Series, dtype: str) -> tuple[pd.Series, bool]:
    """Convert ``series`` to the validated form of ``dtype`` if no information is lost.

    Returns the converted series and True, or the series unchanged and False (pandera's
    dtype check then reports the offending values).
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if series.isna().all():
        return series.astype(_VALIDATED_DTYPES[dtype]) if dtype != "float64" else _as_float(series), True
    if dtype == "float64":
        return (_as_float(series), True) if _is_numeric(series) else (series, False)
    if dtype == "int64":
        if not _is_numeric(series):
            return series, False
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        present = values[~np.isnan(values)]
        if ptypes.is_integer_dtype(series.dtype):
            return series.astype("Int64"), True
        if np.array_equal(present, np.trunc(present)) and bool(np.all(np.abs(present) < 2**63)):
            return _as_float(series).astype("Int64"), True
        return series, False
    if dtype == "string":
        if _is_object(series):
            ok = _object_kind(series) == "string"
        else:
            ok = ptypes.is_string_dtype(series.dtype) or (
                ptypes.is_integer_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype)
            )
        return (series.astype(STRING), True) if ok else (series, False)
    # bool
    if ptypes.is_bool_dtype(series.dtype) or (_is_object(series) and _object_kind(series) == "boolean"):
        return series.astype("boolean"), True
    if ptypes.is_integer_dtype(series.dtype) and bool(series.dropna().isin([0, 1]).all()):
        return series.astype("boolean"), True
    return series, False


def _coerce_time(series: pd.Series) -> tuple[pd.Series, bool]:
    if ptypes.is_datetime64_any_dtype(series.dtype):
        utc = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        return utc.astype(TIMESTAMP), True
    if _is_object(series) or ptypes.is_string_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
        if bool((parsed.isna() & series.notna()).any()):
            return series, False
        return parsed.astype(TIMESTAMP), True
    return series, False


def _coerce_label(series: pd.Series, task: str) -> pd.Series:
    if task == "regression":
        return _as_float(series) if _is_numeric(series) else series
    if ptypes.is_integer_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype):
        return series.astype("Int64")
    if ptypes.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        present = values[~np.isnan(values)]
        if np.array_equal(present, np.trunc(present)):
            return _as_float(series).astype("Int64")
    return series


def _case_clashes(names: Sequence[str]) -> list[list[str]]:
    """Groups of names equal but for case (``Amount`` and ``amount``), each sorted."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def _duplicate_mask(frame: pd.DataFrame) -> np.ndarray:
    """Rows equal to an earlier row (first occurrence kept); hashing is ~7x faster than
    ``DataFrame.duplicated`` on a million rows."""
    if frame.empty or not len(frame.columns):
        return np.zeros(len(frame), dtype=bool)
    hashes = pd.util.hash_pandas_object(frame, index=False)
    return np.asarray(hashes.duplicated(keep="first").to_numpy(), dtype=bool)


# -- the pandera schema ---------------------------------------------------------------
def _null_checks(column: str, limit: float, observed: _Observed) -> list[pa.Check]:
    fraction_name = f"null_fraction<={limit:g}"

    def null_fraction(series: pd.Series) -> bool:
        fraction = float(series.isna().mean()) if len(series) else 0.0
        observed[(column, fraction_name)] = round(fraction, 6)
        return fraction <= limit

    def not_all_null(series: pd.Series) -> bool:
        observed[(column, "not_all_null")] = f"all {len(series)} values null"
        return len(series) == 0 or bool(series.notna().any())

    return [
        pa.Check(null_fraction, name=fraction_name, ignore_na=False),
        pa.Check(not_all_null, name="not_all_null", ignore_na=False),
    ]


def _typed_values(column: str, values: Sequence[Any], dtype: str) -> list[Any]:
    if dtype == "string":
        return [str(v) for v in values]
    try:
        if dtype == "bool":
            return [str(v).strip().lower() in ("1", "true", "yes") for v in values]
        return [int(v) if dtype == "int64" else float(v) for v in values]
    except ValueError as exc:
        raise ValueError(f"expectations.value_sets.{column}: {values!r} are not {dtype} values") from exc


def _value_checks(column: str, dtype: str, expectations: Expectations) -> list[pa.Check]:
    checks = []
    if column in expectations.ranges:
        low, high = expectations.ranges[column]
        checks.append(pa.Check.in_range(low, high))
    if column in expectations.value_sets:
        checks.append(pa.Check.isin(_typed_values(column, expectations.value_sets[column], dtype)))
    return checks


def _integral(series: pd.Series) -> pd.Series:
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(values == np.trunc(values), index=series.index)


def _feature_column(
    column: str, dtype: str, coerced: bool, actual: pd.Series | None, expectations: Expectations, observed: _Observed
) -> pa.Column:
    checks = _null_checks(column, expectations.max_null_fraction, observed)
    if coerced:
        checks += _value_checks(column, dtype, expectations)
    elif dtype == "int64" and actual is not None and ptypes.is_float_dtype(actual.dtype):
        checks.append(pa.Check(_integral, name="integral_values", element_wise=False))
    return pa.Column(_VALIDATED_DTYPES[dtype], checks=checks, nullable=True)


def _label_checks(
    data: DataConfig, known_labels: Sequence[Any] | None, observed: _Observed
) -> tuple[list[pa.Check], Any]:
    exp = data.expectations
    checks = _null_checks(data.target, exp.max_null_fraction, observed)
    if data.task == "regression":
        checks += _value_checks(data.target, "float64", exp)
        return checks, "float64"
    allowed = list(exp.label_values) if exp.label_values is not None else list(known_labels or [])
    if exp.label_values is not None or (allowed and (data.task == "multiclass" or len(set(allowed)) >= 2)):
        checks.append(pa.Check.isin(allowed))
    elif data.task == "binary":
        name = "binary_classes<=2"

        def at_most_two(series: pd.Series) -> bool:
            classes = set(allowed) | set(series.dropna().unique().tolist())
            observed[(data.target, name)] = sorted(classes, key=str)
            return len(classes) <= 2

        checks.append(pa.Check(at_most_two, name=name))
    return checks, None


def _build_schema(
    data: DataConfig,
    columns: _Columns,
    uncoerced: Mapping[str, pd.Series],
    duplicates: np.ndarray | None,
    known_labels: Sequence[Any] | None,
    observed: _Observed,
) -> pa.DataFrameSchema:
    exp = data.expectations
    schema: dict[str, pa.Column] = {}
    for column in columns.ids:
        schema[column] = pa.Column(STRING, nullable=False)
    for column in columns.times:
        schema[column] = pa.Column(TIMESTAMP, nullable=False)
    for column, dtype in columns.features.items():
        schema[column] = _feature_column(column, dtype, column not in uncoerced, uncoerced.get(column), exp, observed)
    if columns.target:
        checks, dtype = _label_checks(data, known_labels, observed)
        schema[columns.target] = pa.Column(dtype, checks=checks, nullable=True)

    min_rows_name = f"min_rows>={exp.min_rows}"
    duplicates_name = f"duplicate_fraction<={exp.max_duplicate_fraction:g}"

    def min_rows(frame: pd.DataFrame) -> bool:
        observed[(None, min_rows_name)] = len(frame)
        return len(frame) >= exp.min_rows

    def duplicate_fraction(frame: pd.DataFrame) -> bool:
        fraction = float(duplicates.mean()) if duplicates is not None and len(duplicates) else 0.0
        observed[(None, duplicates_name)] = round(fraction, 6)
        return fraction <= exp.max_duplicate_fraction

    checks = [pa.Check(min_rows, name=min_rows_name)]
    if data.duplicate_handling == "quarantine":
        checks.append(pa.Check(duplicate_fraction, name=duplicates_name))
    return pa.DataFrameSchema(schema, checks=checks, strict=False, coerce=False)


# -- failures -------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _record(column: str | None, check: str, failure_case: Any, index: Any = None) -> dict[str, Any]:
    return {"column": column, "check": check, "failure_case": failure_case, "index": index}


def _describe(column: str | None, check: str, cases: pd.DataFrame, scalar: bool) -> str:
    where = column or "batch"
    first = _jsonable(cases["failure_case"].iloc[0])
    if check == "column_in_dataframe":
        return "missing column(s): " + ", ".join(str(c) for c in cases["failure_case"])
    if check == "supported_dtype":
        return f"{where}: dtype {first} is not one of {FEATURE_DTYPES}"
    if scalar:
        return (
            f"{where}: {check} failed ({first})"
            if check == "not_all_null"
            else f"{where}: {check} failed (observed {first})"
        )
    if cases["index"].isna().all():
        return f"{where}: expected {check}, got {first}"
    return f"{where}: {check} failed for {len(cases)} row(s), e.g. {first!r}"


def _failures(cases: pd.DataFrame, observed: _Observed, extra: list[str]) -> tuple[list[dict[str, Any]], int, str]:
    """Records (capped, every failed expectation kept), the full count, and the reason."""
    cases = cases.reset_index(drop=True)
    keys = list(zip(cases["column"], cases["check"], strict=True))
    groups: dict[tuple[Any, str], list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault((None if pd.isna(key[0]) else key[0], str(key[1])), []).append(position)
    per_group = max(1, MAX_FAILURE_RECORDS // max(1, len(groups)))
    records: list[dict[str, Any]] = []
    parts: list[str] = []
    for (column, check), positions in groups.items():
        group = cases.iloc[positions]
        scalar = (column, check) in observed and bool(group["index"].isna().all())
        if scalar:
            group = group.assign(failure_case=[observed[(column, check)]] * len(group))
        parts.append(_describe(column, check, group, scalar))
        for row in group.head(per_group).itertuples(index=False):
            records.append(_record(column, check, _jsonable(row.failure_case), _jsonable(row.index)))
    reason = f"{len(groups)} expectation(s) failed: " + "; ".join(parts[:6])
    if len(parts) > 6:
        reason += f"; and {len(parts) - 6} more"
    if extra and any(check == "column_in_dataframe" for _, check in groups):
        reason += f" (unexpected column(s) present: {', '.join(extra)}; renamed?)"
    return records[:MAX_FAILURE_RECORDS], len(cases), reason


# -- the stage ------------------------------------------------------------------------
def missing_config_columns(frame: pd.DataFrame, data: DataConfig) -> list[str]:
    """``"<key>: column <name>"`` for each target, time or id column the config names that ``frame`` lacks."""
    keys = [("data.target", data.target), ("data.time_column", data.time_column)]
    keys += [("data.id_columns", column) for column in data.id_columns]
    present = {str(c) for c in frame.columns}
    return [f"{key}: column {column!r}" for key, column in keys if column is not None and column not in present]


def check_config_columns(readable: Sequence[tuple[str, pd.DataFrame]], data: DataConfig) -> None:
    """Some batch of ``readable`` (name, frame) has every target, time and id column the config names.

    A column no batch has is the config's mistake, not the files': quarantining every
    batch for it would hide the one fix that helps. One batch without it (garbage that
    parses as CSV, a stray export) is that batch's fault: validation quarantines it.
    No readable batch: nothing to check.

    Raises:
        ConfigError: no batch has them all; the message names the keys missing from the
            first readable batch, and that batch's columns.
    """
    if not readable or any(not missing_config_columns(frame, data) for _, frame in readable):
        return
    name, frame = readable[0]
    present = [str(c) for c in frame.columns]
    shown = ", ".join(present[:20]) + (f", ... ({len(present)} in all)" if len(present) > 20 else "")
    where = f"any of the {len(readable)} readable batch(es); the first, {name}, has: {shown}"
    raise ConfigError(f"{'; '.join(missing_config_columns(frame, data))} not in {where}; fix selfheal.yaml")


def _duplicates_note(count: int, fraction: float, handling: DuplicateHandling, limit: float) -> str:
    if handling == "drop":
        return f"dropped {count} duplicate row(s) ({fraction:.2%}; data.expectations.duplicates: drop; first copy kept)"
    return f"dropped {count} duplicate row(s) ({fraction:.2%} <= {limit:.0%} tolerated; first copy kept)"


def _finish(
    frame: pd.DataFrame, columns: _Columns, duplicates: np.ndarray | None, notes: list[str], data: DataConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    dropped: dict[str, int] = {}
    if duplicates is not None and duplicates.any():
        dropped["duplicates"] = int(duplicates.sum())
        limit = data.expectations.max_duplicate_fraction
        notes.append(_duplicates_note(dropped["duplicates"], float(duplicates.mean()), data.duplicate_handling, limit))
        frame = frame[~duplicates]
    if columns.target:
        unlabeled = frame[columns.target].isna()
        if unlabeled.any():
            dropped["null_label"] = int(unlabeled.sum())
            notes.append(f"dropped {dropped['null_label']} row(s) with a null {columns.target!r}")
            frame = frame[~unlabeled]
    out = {}
    for column in columns.expected:
        series = frame[column]
        if series.dtype in ("Int64", "boolean") and not series.isna().any():
            series = series.astype("int64" if series.dtype == "Int64" else "bool")
        out[column] = series
    return pd.DataFrame(out).reset_index(drop=True), dropped


def _prepare(
    frame: pd.DataFrame, data: DataConfig, columns: _Columns, notes: list[str]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Infinite to null, then lossless coercion; returns the frame to check and the
    columns that could not be coerced (kept as they were)."""
    work: dict[str, pd.Series] = {}
    uncoerced: dict[str, pd.Series] = {}
    for column in columns.expected:
        if column not in frame.columns:
            continue  # pandera reports it missing
        series, infinite = _inf_to_null(frame[column])
        if infinite:
            notes.append(f"{column}: {infinite} infinite value(s) counted as null")
        ok = True
        if column in columns.features:
            series, ok = _coerce(series, columns.features[column])
        elif column in columns.times:
            series, ok = _coerce_time(series)
        elif column in columns.ids:
            series, ok = _coerce(series, "string")
        else:
            series = _coerce_label(series, data.task)
        if not ok:
            uncoerced[column] = series
        work[column] = series
    return pd.DataFrame(work, index=frame.index), uncoerced


def _column_notes(columns: _Columns, data: DataConfig, *, inferred: bool) -> list[str]:
    """What the batch's columns mean for this run, said once in the outcome's notes."""
    notes: list[str] = []
    if inferred:
        notes.append(f"feature schema inferred from this batch ({len(columns.features)} columns); lock it")
    for column in columns.times:
        if column != data.time_column:
            notes.append(f"{column}: holds timestamps, carried through, not a feature (set data.time_column)")
    if columns.extra:
        notes.append(f"dropped unexpected column(s): {', '.join(columns.extra)}")
    if columns.target is None:
        notes.append(f"no {data.target!r} column: accepted unlabeled (labels expected later)")
    return notes


def _refuse_case_clashes(frame: pd.DataFrame, columns: _Columns, notes: list[str]) -> ValidationOutcome | None:
    """The refusal of a batch with column names equal but for case, which no Delta table can hold; else None."""
    clashes = _case_clashes([c for c in columns.expected if c in frame.columns])
    if not clashes:
        return None
    records = [_record(", ".join(group), "case_insensitive_unique_names", group[0]) for group in clashes]
    reason = "column names equal but for case (a Delta table cannot hold both): " + "; ".join(
        " / ".join(group) for group in clashes
    )
    return ValidationOutcome(
        False, None, dict(columns.features), records, reason, notes, len(records), rows_in=len(frame)
    )


def validate_batch(
    frame: pd.DataFrame,
    cfg: SelfhealConfig | DataConfig,
    schema: Mapping[str, str] | None = None,
    *,
    known_labels: Sequence[Any] | None = None,
    require_label: bool = True,
) -> ValidationOutcome:
    """Check one batch against every expectation and decide: accept (cleaned) or quarantine.

    Args:
        frame: the batch as read (``flows.pipeline.stages.batch_io.read_batch``).
        cfg: the configuration (its ``data`` section is used) or the ``DataConfig`` itself.
        schema: the locked feature schema; None infers it from this batch.
        known_labels: label classes locked from earlier batches (used when
            ``expectations.label_values`` is not set).
        require_label: False accepts a batch without the label column (labels that
            arrive later); labels that are present are still checked.

    Returns:
        The decision, the cleaned rows when accepted, every failure when not.

    Raises:
        ValueError: the locked schema or the config's value sets are malformed.
    """
    data = cfg.data if isinstance(cfg, SelfhealConfig) else cfg
    frame = frame.rename(columns=str).reset_index(drop=True)
    columns = _sort_columns(frame, data, schema, require_label)
    notes = _column_notes(columns, data, inferred=schema is None)
    refused = _refuse_case_clashes(frame, columns, notes)
    if refused is not None:
        return refused
    work, uncoerced = _prepare(frame, data, columns, notes)
    # ``keep`` lands identical rows as they are: no need to find them.
    duplicates = None if data.duplicate_handling == "keep" else _duplicate_mask(work)
    observed: _Observed = {}
    pandera_schema = _build_schema(data, columns, uncoerced, duplicates, known_labels, observed)
    cases = pd.DataFrame([c for c in columns.failures], columns=["column", "check", "failure_case", "index"])
    try:
        pandera_schema.validate(work, lazy=True)
    except SchemaErrors as err:
        found = err.failure_cases[["column", "check", "failure_case", "index"]]
        cases = found if cases.empty else pd.concat([cases, found], ignore_index=True)
    if not cases.empty:
        records, count, reason = _failures(cases, observed, columns.extra)
        logger.debug("batch refused: %s", reason)
        return ValidationOutcome(False, None, dict(columns.features), records, reason, notes, count, rows_in=len(frame))
    out, dropped = _finish(work, columns, duplicates, notes, data)
    labels = None
    if columns.target and data.task != "regression":
        seen = {_jsonable(v) for v in out[columns.target].unique()}
        labels = sorted(seen | {_jsonable(v) for v in (known_labels or [])}, key=str)
    return ValidationOutcome(
        True, out, dict(columns.features), [], "", notes, 0, labels, rows_in=len(frame), dropped=dropped
    )
