"""The model's input contract: validate JSON records against the MLflow signature.

A request body is one record (``{"amount": 12.5, ...}``), a list of records, or
MLflow's own ``{"dataframe_records": [...]}``. Validation turns it into columns
(name -> list of values) in one pass over the records, without pandas; the
model's DataFrame is built from those columns once per micro-batch.

A table to score in batch (``flows.batch``) goes through the same rules column by
column (``validate_table``): each column's arrays flag the rows that may break a rule,
and only those rows go through the per-value checks the server runs, so a bad row is
refused with the server's words and only that row is refused.

Example:
    >>> schema = FeatureSchema.from_signature(model_meta.signature)
    >>> columns, rows, single = schema.validate(orjson.loads(body), max_rows=1000)
    >>> frame = schema.frame(columns)
    >>> checked = schema.validate_table(arrow_table)     # checked.frame, checked.valid, checked.errors
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from checkpoints.exceptions import SelfhealError

_MISSING = object()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_EXACT_FLOAT_INT = 2**53
_MAX_ERRORS = 20

#: MLflow column types the server validates, with a word a person understands.
_TYPE_WORDS = {
    "double": "a number (double)",
    "float": "a number (float)",
    "long": "an integer (long)",
    "integer": "an integer (32-bit)",
    "boolean": "true or false (boolean)",
    "string": "a string",
    "datetime": "an ISO-8601 date-time string",
}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "datetime": pa.timestamp("us", tz="UTC"),
}
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer", "minimum": _INT64_MIN, "maximum": _INT64_MAX},
    "integer": {"type": "integer", "minimum": _INT32_MIN, "maximum": _INT32_MAX},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
}


class UnsupportedSignature(SelfhealError):
    """The model's signature cannot be served (no column names, or a column type we cannot validate)."""


@dataclass
class RequestInvalid(SelfhealError):
    """A request body broke the model's input contract.

    Attributes:
        errors: FastAPI-style details: ``{"loc": [...], "msg": ..., "type": ...}``.
    """

    errors: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in self.errors)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
    text = repr(value)
    return f"{kind} {text[:40]}{'...' if len(text) > 40 else ''}" if kind in {"string", "integer", "number"} else kind


# Each checker returns the value to store, or raises _Bad with a message.
class _Bad(SelfhealError):
    pass


def _check_double(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        if value != value or value in (math.inf, -math.inf):
            raise _Bad("must be a finite number")
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise _Bad("is too large for a double") from None
    raise _Bad("")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32(value: Any) -> Any:
    value = _check_double(value)
    if abs(value) > _FLOAT32_MAX:
        raise _Bad("is too large for a float")
    return value


def _int_checker(lo: int, hi: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is int:
            if lo <= value <= hi:
                return value
            raise _Bad(f"is out of range [{lo}, {hi}]")
        if type(value) is float and value.is_integer():
            # Beyond 2**53 a float is not the integer that was sent (the JSON parser gives a float
            # for an integer beyond int64): refused rather than rounded.
            if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT and lo <= value <= hi:
                return int(value)
            raise _Bad(f"is out of range [{lo}, {hi}] or not an exact integer")
        raise _Bad("")

    return check


def _check_bool(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _Bad("")


def _check_string(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _Bad("")


def _check_datetime(value: Any) -> Any:
    if type(value) is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad("is not an ISO-8601 date-time") from None
        return parsed
    raise _Bad("")


_CHECKERS: dict[str, Callable[[Any], Any]] = {
    "double": _check_double,
    "float": _check_float32,
    "long": _int_checker(_INT64_MIN, _INT64_MAX),
    "integer": _int_checker(_INT32_MIN, _INT32_MAX),
    "boolean": _check_bool,
    "string": _check_string,
    "datetime": _check_datetime,
}


@dataclass(frozen=True)
class Column:
    """One input column of the signature."""

    name: str
    type: str
    required: bool = True


class FeatureSchema:
    """The columns a model takes, validated from JSON and turned into a DataFrame."""

    def __init__(self, columns: Sequence[Column]) -> None:
        if not columns:
            raise UnsupportedSignature("the model signature has no input columns")
        for col in columns:
            if col.type not in _CHECKERS:
                raise UnsupportedSignature(
                    f"signature column {col.name!r} has type {col.type!r}; the server validates "
                    f"only {sorted(_CHECKERS)}"
                )
        self.columns = tuple(columns)
        self.names = tuple(c.name for c in columns)
        self._name_set = frozenset(self.names)
        self._checks = tuple((c.name, _CHECKERS[c.type], c.required, c.type) for c in columns)
        self.arrow_fields = [pa.field(c.name, _ARROW_TYPES[c.type], nullable=True) for c in columns]
        self.key = tuple((c.name, c.type) for c in columns)

    @classmethod
    def from_signature(cls, signature: Any) -> FeatureSchema:
        """Build from an ``mlflow.models.ModelSignature`` with named columns."""
        if signature is None or signature.inputs is None:
            raise UnsupportedSignature(
                "the model has no signature; log it with serving.modelio.log_sklearn_model, which records one"
            )
        inputs = signature.inputs
        if inputs.is_tensor_spec() or not inputs.has_input_names():
            raise UnsupportedSignature("the model signature has no named columns (tensor signatures are not served)")
        return cls(
            [
                Column(spec.name, getattr(spec.type, "name", str(spec.type)), bool(spec.required))
                for spec in inputs.inputs
            ]
        )

    @classmethod
    def from_mlmodel(cls, meta: dict[str, Any]) -> FeatureSchema:
        """Build from an ``MLmodel`` file's data (``serving.modelio.read_mlmodel``): its ``signature.inputs`` JSON.

        The same contract as ``from_signature`` on the ``ModelSignature`` MLflow would parse from
        it, without importing MLflow.
        """
        raw = (meta.get("signature") or {}).get("inputs")
        if not raw:
            raise UnsupportedSignature(
                "the model has no signature; log it with serving.modelio.log_sklearn_model, which records one"
            )
        try:
            specs = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise UnsupportedSignature(f"the model signature is not JSON: {exc}") from exc
        if not isinstance(specs, list) or any(not isinstance(s, dict) or s.get("type") == "tensor" for s in specs):
            raise UnsupportedSignature("the model signature has no named columns (tensor signatures are not served)")
        if any(not s.get("name") for s in specs):
            raise UnsupportedSignature("the model signature has no named columns (tensor signatures are not served)")
        return cls([Column(str(s["name"]), str(s.get("type")), bool(s.get("required", True))) for s in specs])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSchema) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    # -- validation --------------------------------------------------------
    def validate(self, payload: Any, *, max_rows: int) -> tuple[dict[str, list[Any]], int, bool]:
        """Check a parsed JSON body and return (columns, row count, whether it was a single record).

        Raises:
            RequestInvalid: naming each bad field with the type it should have.
        """
        records, prefix, single = _records(payload, self._name_set, max_rows)
        columns: dict[str, list[Any]] = {name: [] for name in self.names}
        appenders = [
            (name, check, required, kind, columns[name].append) for name, check, required, kind in self._checks
        ]
        errors: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            loc = prefix if single else (*prefix, index)
            if not isinstance(record, dict):
                errors.append(
                    _err(loc, f"expected an object with the model's fields, got {_describe(record)}", "dict_type")
                )
            else:
                self._check_record(record, loc, appenders, errors)
            if len(errors) >= _MAX_ERRORS:
                break
        if errors:
            raise RequestInvalid(errors[:_MAX_ERRORS])
        return columns, len(records), single

    def _check_record(
        self, record: dict[str, Any], loc: tuple[Any, ...], appenders: list[_Appender], errors: list[dict[str, Any]]
    ) -> None:
        """Append one record's checked values to the columns (None where bad), and its errors to ``errors``."""
        if len(record) > len(self.names) or not self._name_set.issuperset(record):
            msg = f"unexpected field; the model takes: {', '.join(self.names)}"
            for extra in [k for k in record if k not in self._name_set][:_MAX_ERRORS]:
                errors.append(_err((*loc, extra), msg, "extra_forbidden"))
        for name, check, required, kind, append in appenders:
            value = record.get(name, _MISSING)
            if value is None or value is _MISSING:
                if required:
                    errors.append(_missing((*loc, name), kind, absent=value is _MISSING))
                append(None)
                continue
            try:
                append(check(value))
            except _Bad as bad:
                errors.append(_refused((*loc, name), kind, value, bad))
                append(None)

    # -- conversion --------------------------------------------------------
    def frame(self, columns: dict[str, list[Any]]) -> pd.DataFrame:
        """The DataFrame the model takes, with the dtypes of the signature."""
        data = {col.name: _model_column(col.type, columns[col.name]) for col in self.columns}
        return pd.DataFrame(data, copy=False)

    def arrays(self, columns: dict[str, list[Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Each column as ``frame(columns)[name].to_numpy()`` gives it, without building the frame.

        A text column is an object array with NaN where a value is missing (pandas' str dtype), or
        of None when no value is there; nullable booleans and datetimes go through pandas, as in
        the frame.
        """
        out: dict[str, np.ndarray[Any, Any]] = {}
        for col in self.columns:
            values = _model_column(col.type, columns[col.name])
            if isinstance(values, np.ndarray):
                out[col.name] = values
            elif col.type == "string" and isinstance(values, list):
                # pandas makes a column with any text its str dtype (NaN where missing) and keeps a
                # column of None only as objects (None), which scikit-learn's imputer does not fill.
                text = any(isinstance(v, str) for v in values)
                out[col.name] = np.array([np.nan if v is None and text else v for v in values], dtype=object)
            else:
                out[col.name] = pd.Series(values, copy=False).to_numpy()
        return out

    def validate_table(self, table: pa.Table) -> TableCheck:
        """Check every row of a table to score in batch: the valid rows as the model's frame, the others' errors.

        The rules are ``validate``'s, value by value: a required field absent or null, a value of
        the wrong type, a non-finite number, an integer out of range, each makes its row invalid,
        and only its row. Two differences, both about tables rather than values: columns the model
        does not take are ignored (a table carries ids, labels and lineage; a request may not), and
        missing values are a table's: null, and NaN in a floating-point column (pandas' marker; JSON
        has no NaN). A text column (a CSV's, or a table that keeps numbers as text) is read as the
        literal each cell spells, so ``"12.5"`` is 12.5 and ``"n/a"`` is the string a double column
        refuses.

        Only the rows a column's arrays flag (an infinite number, an integer out of range, a cell
        that is not of the column's type) go through the per-value checks, which decide.
        """
        rows = table.num_rows
        errors: dict[int, list[dict[str, Any]]] = {}
        checked = {
            col.name: _table_column(
                col, table.column(col.name) if col.name in table.column_names else None, rows, errors
            )
            for col in self.columns
        }
        valid = np.ones(rows, dtype=bool)
        if errors:
            valid[np.fromiter(errors, dtype=np.int64, count=len(errors))] = False
        data = {}
        for col in self.columns:
            values, nulls = checked[col.name]
            if errors:
                values = values.filter(pa.array(valid)) if isinstance(values, pa.Array) else values[valid]
                nulls = nulls[valid]
            data[col.name] = _model_column(col.type, _with_nulls(col.type, values, nulls), bool(nulls.any()))
        return TableCheck(pd.DataFrame(data, copy=False), valid, errors)

    def record_schema(self) -> dict[str, Any]:
        """JSON Schema of one record (for the OpenAPI document)."""
        return {
            "type": "object",
            "additionalProperties": False,
            "required": [c.name for c in self.columns if c.required],
            "properties": {
                c.name: (_JSON_TYPES[c.type] if c.required else {"anyOf": [_JSON_TYPES[c.type], {"type": "null"}]})
                for c in self.columns
            },
        }


def _err(loc: tuple[Any, ...], msg: str, kind: str, expected: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": kind}
    if expected is not None:
        error["expected"] = expected
    return error


def _missing(loc: tuple[Any, ...], kind: str, *, absent: bool) -> dict[str, Any]:
    """A required field that is ``absent`` (not there at all) or null."""
    what = "field required" if absent else "must not be null"
    return _err(loc, f"{what}: expected {_TYPE_WORDS[kind]}", "missing", kind)


def _refused(loc: tuple[Any, ...], kind: str, value: Any, bad: _Bad) -> dict[str, Any]:
    """A value its column's checker refused (``bad`` says why; empty: it is of the wrong type)."""
    msg = f"value {bad}" if str(bad) else f"expected {_TYPE_WORDS[kind]}, got {_describe(value)}"
    return _err(loc, msg, f"{kind}_type", kind)


def _model_column(kind: str, values: Any, has_null: bool | None = None) -> Any:
    """One column as the model takes it (``values``: checked values, None or NaN/NaT where missing).

    ``has_null`` None: look for None in ``values`` (a list from ``validate``) where the dtype depends on it.
    """
    if kind == "double":
        return np.asarray(values, dtype=np.float64)
    if kind == "float":
        return np.asarray(values, dtype=np.float32)
    if kind in ("long", "integer"):
        if has_null if has_null is not None else None in values:
            return np.asarray(values, dtype=np.float64)
        return np.asarray(values, dtype=np.int64 if kind == "long" else np.int32)
    if kind == "boolean":
        if has_null if has_null is not None else None in values:
            return pd.array(values, dtype="boolean")
        return np.asarray(values, dtype=bool)
    if kind == "datetime":
        return pd.to_datetime(values, utc=True)
    if isinstance(values, pa.Array):  # a table's text column (validate_table): pandas' str dtype, as a list gets
        return values.to_pandas()
    return values


@dataclass(frozen=True)
class TableCheck:
    """A table's rows checked against the input contract (``FeatureSchema.validate_table``).

    Attributes:
        frame: the valid rows as the model takes them (the signature's dtypes), in table order.
        valid: one flag per table row.
        errors: table row position -> that row's errors, as ``RequestInvalid.errors`` with ``loc`` = ``[field]``.
    """

    frame: pd.DataFrame
    valid: np.ndarray[Any, np.dtype[np.bool_]]
    errors: dict[int, list[dict[str, Any]]]

    def reason(self, row: int) -> str:
        """One line naming each bad field of table row ``row`` (empty for a valid row)."""
        return str(RequestInvalid(self.errors.get(row, [])))


#: Bounds of the integer types (what ``_int_checker`` enforces), for the whole-column checks.
_INT_BOUNDS = {"long": (_INT64_MIN, _INT64_MAX), "integer": (_INT32_MIN, _INT32_MAX)}
_NUMBER_KINDS = ("double", "float", "long", "integer")
#: Kinds whose text cells are read as the literal they spell (a string stays a string, a date-time is parsed).
_LITERAL_KINDS = (*_NUMBER_KINDS, "boolean")


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


def _literal(text: str) -> Any:
    """What a text cell spells: true/false, an integer, a number, else the text itself."""
    word = text.strip()
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    for parse in (int, float):
        try:
            return parse(word)
        except ValueError:
            continue
    return text


def _table_column(
    col: Column, column: pa.ChunkedArray | None, rows: int, errors: dict[int, list[dict[str, Any]]]
) -> tuple[np.ndarray[Any, Any] | pa.Array, np.ndarray[Any, np.dtype[np.bool_]]]:
    """One column of a table checked: (values, null flags); each bad row's error is added to ``errors``.

    A value of a bad row is left as anything (the row is dropped); a null's value is a placeholder.
    """
    kind = col.type
    if column is None:
        if col.required:
            for row in range(rows):
                errors.setdefault(row, []).append(_missing((col.name,), kind, absent=True))
        return _placeholders(kind, rows), np.ones(rows, dtype=bool)
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    text = _is_text(array.type)
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(array.type):  # NaN is how pandas (and a parquet file written from it) says "missing"
        nulls |= np.asarray(pc.is_nan(array).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    values, suspect = _column_values(kind, array, text)
    check = _CHECKERS[kind]
    for row in np.flatnonzero(suspect & ~nulls).tolist():
        value = array[row].as_py()
        if text and kind in _LITERAL_KINDS:
            value = _literal(value)
        try:
            checked = check(value)
        except _Bad as bad:
            errors.setdefault(row, []).append(_refused((col.name,), kind, value, bad))
            continue
        values[row] = _utc64(checked) if kind == "datetime" else checked
    if col.required:
        for row in np.flatnonzero(nulls).tolist():
            errors.setdefault(row, []).append(_missing((col.name,), kind, absent=False))
    return values, nulls


def _placeholders(kind: str, rows: int) -> np.ndarray[Any, Any]:
    if kind in _NUMBER_KINDS:
        return np.full(rows, np.nan)
    if kind == "datetime":
        return np.full(rows, np.datetime64("NaT"), dtype="datetime64[us]")
    return np.full(rows, None, dtype=object)


def _column_values(
    kind: str, array: pa.Array, text: bool
) -> tuple[np.ndarray[Any, Any] | pa.Array, np.ndarray[Any, np.dtype[np.bool_]]]:
    """(values, suspect rows) of one column: the suspects go through the per-value check.

    Values are a NumPy array the suspects' checked values are written into, or (a text
    column of a string field, which has no suspects) the Arrow array itself.
    """
    rows = len(array)
    if kind in _NUMBER_KINDS and (text or _is_number(array.type)):
        return _numbers(kind, array, text)
    if kind == "boolean" and pa.types.is_boolean(array.type):
        return array.fill_null(False).to_numpy(zero_copy_only=False), np.zeros(rows, dtype=bool)
    if kind == "boolean" and text:
        lower = pc.utf8_lower(pc.utf8_trim_whitespace(array))
        true = pc.equal(lower, "true").fill_null(False).to_numpy(zero_copy_only=False)
        false = pc.equal(lower, "false").fill_null(False).to_numpy(zero_copy_only=False)
        return true, ~(true | false)
    if kind == "string" and text:
        # Kept in Arrow: the model's frame takes it as pandas' Arrow-backed strings, no Python object per cell.
        return array.cast(pa.string()), np.zeros(rows, dtype=bool)
    if kind == "datetime" and pa.types.is_timestamp(array.type):
        # A timestamp without a zone is UTC, as the server reads an ISO-8601 string without one.
        utc = pc.cast(array, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
        return utc.to_numpy(zero_copy_only=False), np.zeros(rows, dtype=bool)
    if kind == "datetime" and text:
        parsed = pd.to_datetime(
            pd.Series(array.to_numpy(zero_copy_only=False), dtype=object), utc=True, errors="coerce", format="ISO8601"
        )
        values = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
        return values, np.isnat(values)
    # Any other type: every value goes through the check (which says what it should have been).
    return _placeholders(kind, rows), np.ones(rows, dtype=bool)


def _numbers(
    kind: str, array: pa.Array, text: bool
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.bool_]]]:
    """A number column's values and its suspect rows (text: what each cell spells; None where it spells no number)."""
    if text:
        numbers = pd.to_numeric(pd.Series(array.to_numpy(zero_copy_only=False), dtype=object), errors="coerce")
        floats = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pa.types.is_integer(array.type) and kind in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[kind]
        filled = array.fill_null(0)
        if pa.types.is_uint64(filled.type):  # the one integer type int64 does not hold
            unsigned = filled.to_numpy(zero_copy_only=False)
            return unsigned.astype(np.int64), unsigned > np.uint64(hi)
        ints = filled.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return ints, (ints < lo) | (ints > hi)
    else:
        floats = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    finite = np.isfinite(floats)
    if kind == "double":
        return floats, ~finite
    if kind == "float":
        return floats, ~finite | (np.abs(np.where(finite, floats, 0.0)) > _FLOAT32_MAX)
    lo, hi = _INT_BOUNDS[kind]
    whole = np.where(finite, floats, 0.0)
    exact = finite & (whole == np.floor(whole)) & (np.abs(whole) <= _EXACT_FLOAT_INT) & (whole >= lo) & (whole <= hi)
    return np.where(exact, whole, 0.0).astype(np.int64), ~exact


def _with_nulls(kind: str, values: np.ndarray[Any, Any] | pa.Array, nulls: np.ndarray[Any, Any]) -> Any:
    """``values`` with the model's missing value where ``nulls`` (NaN, None or NaT, as ``frame`` makes them)."""
    if isinstance(values, pa.Array) or not nulls.any():  # Arrow text keeps its nulls
        return values
    if kind in _NUMBER_KINDS:
        out = values.astype(np.float64)
        out[nulls] = np.nan
        return out
    if kind == "datetime":
        out = values.copy()
        out[nulls] = np.datetime64("NaT")
        return out
    out = values.astype(object)
    out[nulls] = None
    return out


def _utc64(value: datetime) -> Any:
    """A checked date-time as naive UTC microseconds (a value without a zone is UTC)."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.tz_localize(None).to_datetime64().astype("datetime64[us]")


#: (name, checker, required, MLflow type, the column's append) for each column of a request.
_Appender = tuple[str, Callable[[Any], Any], bool, str, Callable[[Any], None]]


def _records(payload: Any, names: frozenset[str], max_rows: int) -> tuple[list[Any], tuple[Any, ...], bool]:
    """The records of a body, where errors about them point, and whether the body was one record.

    Raises:
        RequestInvalid: the body is not a record or a non-empty array of at most ``max_rows`` records.
    """
    single = False
    prefix: tuple[Any, ...] = ("body",)
    if isinstance(payload, dict):
        if "dataframe_records" in payload and len(payload) == 1 and "dataframe_records" not in names:
            records = payload["dataframe_records"]
            prefix = ("body", "dataframe_records")
            if not isinstance(records, list):
                raise RequestInvalid([_err(prefix, "expected an array of records", "list_type")])
        else:
            records, single = [payload], True
    elif isinstance(payload, list):
        records = payload
    else:
        msg = f"expected a JSON object (one record) or an array of records, got {_describe(payload)}"
        raise RequestInvalid([_err(prefix, msg, "body_type")])
    if not records:
        raise RequestInvalid([_err(prefix, "expected at least one record, got an empty array", "too_short")])
    if len(records) > max_rows:
        msg = f"at most {max_rows} records per request, got {len(records)}; split the request"
        raise RequestInvalid([_err(prefix, msg, "too_long")])
    return records, prefix, single
