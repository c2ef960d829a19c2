"""The model's input contract: validate JSON records against the MLflow signature.

A request body is one record (``{"amount": 12.5, ...}``), a list of records, or
MLflow's own ``{"dataframe_records": [...]}``. Validation turns it into columns
(name -> list of values) in one pass over the records, without pandas; the
model's DataFrame is built from those columns once per micro-batch.

Example:
    >>> schema = FeatureSchema.from_signature(model_meta.signature)
    >>> columns, rows, single = schema.validate(orjson.loads(body), max_rows=1000)
    >>> frame = schema.frame(columns)
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
                    what = "field required" if value is _MISSING else "must not be null"
                    errors.append(_err((*loc, name), f"{what}: expected {_TYPE_WORDS[kind]}", "missing", kind))
                append(None)
                continue
            try:
                append(check(value))
            except _Bad as bad:
                msg = f"value {bad}" if str(bad) else f"expected {_TYPE_WORDS[kind]}, got {_describe(value)}"
                errors.append(_err((*loc, name), msg, f"{kind}_type", kind))
                append(None)

    # -- conversion --------------------------------------------------------
    def frame(self, columns: dict[str, list[Any]]) -> pd.DataFrame:
        """The DataFrame the model takes, with the dtypes of the signature."""
        data: dict[str, Any] = {}
        for col in self.columns:
            values = columns[col.name]
            if col.type == "double":
                data[col.name] = np.array(values, dtype=np.float64)
            elif col.type == "float":
                data[col.name] = np.array(values, dtype=np.float32)
            elif col.type in ("long", "integer"):
                if None in values:
                    data[col.name] = np.array(values, dtype=np.float64)
                else:
                    data[col.name] = np.array(values, dtype=np.int64 if col.type == "long" else np.int32)
            elif col.type == "boolean":
                data[col.name] = pd.array(values, dtype="boolean") if None in values else np.array(values, dtype=bool)
            elif col.type == "datetime":
                data[col.name] = pd.to_datetime(values, utc=True)
            else:
                data[col.name] = values
        return pd.DataFrame(data, copy=False)

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
