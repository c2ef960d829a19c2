"""Table rows as dataclasses: one declaration gives a Delta table's schema, its rows and back.

Field types map to Arrow types: ``str`` -> string, ``int`` -> int64, ``float`` ->
float64, ``bool`` -> bool, ``datetime`` -> timestamp (us, UTC), an ``Enum`` -> string
(its value), a ``Literal`` -> its values' type, ``dict``/``list``/``tuple`` -> string
(JSON). ``X | None`` is ``X``; every column is nullable. Columns come in field order,
so a field added later goes last.

Example:
    >>> @dataclass(frozen=True)
    ... class Lease:
    ...     incident_id: str
    ...     expires_at: datetime
    >>> arrow_schema(Lease).names
    ['incident_id', 'expires_at']
    >>> lake.append("_leases", to_table([Lease("inc-1", now)]), key="lease:inc-1")
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import pyarrow as pa

T = TypeVar("T")

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}
_JSON = (dict, list, tuple, Mapping, Sequence)


def _plain(hint: Any) -> Any:
    """``X`` for ``X | None``; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_json(hint: Any) -> bool:
    return (typing.get_origin(hint) or hint) in _JSON


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


def arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a field annotated ``hint``.

    Raises:
        TypeError: no column type for that annotation.
    """
    hint = _plain(hint)
    if typing.get_origin(hint) is typing.Literal:
        return arrow_type(type(typing.get_args(hint)[0]))
    if _is_enum(hint) or _is_json(hint):
        return pa.string()
    if hint in _SCALARS:
        return _SCALARS[hint]
    raise TypeError(f"no Delta column type for a field annotated {hint!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> plain annotation, resolved once per class."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: _plain(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return _HINTS[cls]


def arrow_schema(cls: type) -> pa.Schema:
    """The table schema of the row dataclass ``cls``: one nullable column per field, in field order."""
    return pa.schema([(name, arrow_type(hint)) for name, hint in _hints(cls).items()])


def to_row(obj: Any) -> dict[str, Any]:
    """``obj`` (a row dataclass) as a dict of column values (enums by value, containers as JSON)."""
    row: dict[str, Any] = {}
    for name, hint in _hints(type(obj)).items():
        value = getattr(obj, name)
        if value is not None and _is_enum(hint):
            value = value.value
        elif value is not None and _is_json(hint):
            value = json.dumps(value, sort_keys=True, default=str)
        row[name] = value
    return row


def to_table(rows: Sequence[Any]) -> pa.Table:
    """Row dataclasses of one type as a table with their declared schema."""
    if not rows:
        raise ValueError("to_table needs at least one row (its type gives the schema)")
    return pa.Table.from_pylist([to_row(r) for r in rows], schema=arrow_schema(type(rows[0])))


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def from_row(cls: type[T], row: Mapping[str, Any]) -> T:
    """The row dataclass ``cls`` from a table row.

    A null (or missing, or empty JSON) value of a field that has a default gets the
    default, so rows written before a column existed still read.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, hint in _hints(cls).items():
        value = row.get(name)
        if (value is None or (value == "" and _is_json(hint))) and _has_default(fields[name]):
            continue
        if value is not None and _is_enum(hint):
            value = hint(value)
        elif isinstance(value, str) and _is_json(hint):
            value = json.loads(value)
        values[name] = value
    return cls(**values)
