"""The model's input contract on plain JSON values: bodies, types, errors, frames, JSON Schema."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from serving.schema import Column, FeatureSchema, RequestInvalid, UnsupportedSignature

SCHEMA = FeatureSchema(
    [
        Column("amount", "double"),
        Column("ratio", "float"),
        Column("count", "long"),
        Column("small", "integer"),
        Column("flag", "boolean"),
        Column("segment", "string"),
        Column("at", "datetime"),
        Column("note", "string", required=False),
    ]
)
GOOD = {"amount": 12, "ratio": 0.5, "count": 3.0, "small": 7, "flag": True, "segment": "a", "at": "2026-01-01T00:00Z"}


def _errors(payload: Any, max_rows: int = 10) -> list[dict[str, Any]]:
    with pytest.raises(RequestInvalid) as caught:
        SCHEMA.validate(payload, max_rows=max_rows)
    return caught.value.errors


def test_one_record_a_list_and_dataframe_records_are_accepted() -> None:
    columns, rows, single = SCHEMA.validate(GOOD, max_rows=10)
    assert (rows, single) == (1, True)
    assert columns["amount"] == [12.0] and type(columns["amount"][0]) is float  # an int is a double
    assert columns["count"] == [3] and type(columns["count"][0]) is int  # an integral float is a long
    assert columns["note"] == [None]  # optional and absent
    assert SCHEMA.validate([GOOD, GOOD], max_rows=10)[1:] == (2, False)
    assert SCHEMA.validate({"dataframe_records": [GOOD] * 3}, max_rows=10)[1:] == (3, False)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("amount", math.nan, "value must be a finite number"),
        ("amount", True, "expected a number (double), got boolean"),
        ("ratio", 1e39, "value is too large for a float"),
        ("count", 2**63, "value is out of range"),
        ("count", 2.5, "expected an integer (long), got number 2.5"),
        ("small", 2**31, "value is out of range [-2147483648, 2147483647]"),
        ("flag", 1, "expected true or false (boolean), got integer 1"),
        ("segment", 5, "expected a string, got integer 5"),
        ("at", "yesterday", "value is not an ISO-8601 date-time"),
        ("segment", None, "must not be null: expected a string"),
    ],
)
def test_a_bad_value_is_named_with_the_type_it_should_have(field: str, value: Any, message: str) -> None:
    (error,) = _errors({**GOOD, field: value})
    assert error["loc"] == ["body", field]
    assert error["msg"].startswith(message)


def test_missing_and_extra_fields_are_reported_per_record() -> None:
    missing = {k: v for k, v in GOOD.items() if k != "flag"}
    errors = _errors([GOOD, missing, {**GOOD, "colour": "red"}])
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["body", 1, "flag"], "missing"),
        (["body", 2, "colour"], "extra_forbidden"),
    ]
    assert errors[0]["msg"] == "field required: expected true or false (boolean)"


@pytest.mark.parametrize(
    "payload,kind",
    [
        ("text", "body_type"),
        ([], "too_short"),
        ([GOOD] * 11, "too_long"),
        ({"dataframe_records": "x"}, "list_type"),
        ([GOOD, 3], "dict_type"),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused(payload: Any, kind: str) -> None:
    assert [e["type"] for e in _errors(payload)] == [kind]


def test_errors_are_capped_at_twenty() -> None:
    errors = _errors([{}] * 10)
    assert len(errors) == 20 and errors[-1]["loc"][:2] == ["body", 2]
    assert "; " in str(RequestInvalid(errors[:2]))


def test_the_frame_has_the_signatures_dtypes() -> None:
    columns, _, _ = SCHEMA.validate([GOOD, {**GOOD, "count": 4, "flag": False}], max_rows=10)
    frame = SCHEMA.frame(columns)
    assert list(frame.columns) == list(SCHEMA.names)
    assert (frame["amount"].dtype, frame["ratio"].dtype) == (np.float64, np.float32)
    assert (frame["count"].dtype, frame["small"].dtype, frame["flag"].dtype) == (np.int64, np.int32, np.bool_)
    assert frame["at"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    optional = FeatureSchema([Column("count", "long", required=False), Column("flag", "boolean", required=False)])
    holes = optional.frame(optional.validate([{"count": 1}, {"flag": True}], max_rows=10)[0])
    assert holes["count"].dtype == np.float64 and math.isnan(holes["count"].iloc[1])
    assert str(holes["flag"].dtype) == "boolean" and holes["flag"].isna().tolist() == [True, False]


def test_record_schema_and_refused_signatures() -> None:
    record = SCHEMA.record_schema()
    assert record["required"] == [c.name for c in SCHEMA.columns if c.name != "note"]
    assert record["properties"]["small"] == {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
    assert record["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert FeatureSchema([Column("a", "double")]) == FeatureSchema([Column("a", "double")]) != SCHEMA
    with pytest.raises(UnsupportedSignature, match="no input columns"):
        FeatureSchema([])
    with pytest.raises(UnsupportedSignature, match="has type 'binary'"):
        FeatureSchema([Column("blob", "binary")])
    with pytest.raises(UnsupportedSignature, match="no signature"):
        FeatureSchema.from_signature(None)


# -- a table to score in batch: the same rules, column by column ---------------------------------
def _table(**columns: pa.Array) -> pa.Table:
    """Two rows of GOOD's values as typed columns, with ``columns`` in place of theirs."""
    good = {
        "amount": pa.array([12.0, 12.0]),
        "ratio": pa.array([0.5, 0.5], pa.float32()),
        "count": pa.array([3, 3]),
        "small": pa.array([7, 7], pa.int32()),
        "flag": pa.array([True, True]),
        "segment": pa.array(["a", "a"]),
        "at": pa.array(["2026-01-01T00:00Z"] * 2),
        "note": pa.array([None, None], pa.string()),
    }
    return pa.table({**good, **columns})


@pytest.mark.parametrize(
    "field,column,value",
    [
        ("amount", pa.array([1.0, math.inf]), math.inf),
        ("amount", pa.array([True, True]), True),  # a boolean column: no row of it is a number
        ("amount", pa.array(["12.5", "n/a"]), "n/a"),  # text: the literal each cell spells
        ("ratio", pa.array([0.5, 1e39]), 1e39),
        ("count", pa.array([3, 2**63], pa.uint64()), 2**63),
        ("count", pa.array([3.0, 2.5]), 2.5),
        ("small", pa.array([7, 2**31]), 2**31),
        ("flag", pa.array(["true", "yes"]), "yes"),
        ("segment", pa.array(["a", None]), None),
        ("at", pa.array(["2026-01-01T00:00Z", "yesterday"]), "yesterday"),
    ],
)
def test_a_table_row_is_refused_with_the_words_a_request_gets(field: str, column: pa.Array, value: Any) -> None:
    checked = SCHEMA.validate_table(_table(**{field: column}))
    (request,) = _errors({**GOOD, field: value})
    assert not checked.valid[1] and checked.errors[1] == [{**request, "loc": [field]}]
    assert checked.reason(1) == f"{field}: {request['msg']}"
    assert checked.valid[0] == (value is not True)  # the first row is good, but for the boolean column


def test_a_tables_valid_rows_make_the_frame_a_request_makes() -> None:
    text = {"count": pa.array(["3", "4"]), "flag": pa.array(["True", "false"])}  # a CSV's cells
    good, bad = _table(amount=pa.array(["12", "13"]), **text), _table(amount=pa.array(["x", "y"]), **text)
    table = pa.concat_tables([good, bad]).drop_columns(["note"])
    checked = SCHEMA.validate_table(table.append_column("id", pa.array(["r1", "r2", "r3", "r4"])))  # ignored
    assert checked.valid.tolist() == [True, True, False, False]
    request = SCHEMA.frame(SCHEMA.validate([GOOD, {**GOOD, "amount": 13, "count": 4, "flag": False}], max_rows=9)[0])
    pd.testing.assert_frame_equal(checked.frame.drop(columns="note"), request.drop(columns="note"))
    assert checked.frame["note"].isna().all() and request["note"].isna().all()
    absent = FeatureSchema([Column("amount", "double"), Column("gone", "long")]).validate_table(_table())
    assert absent.reason(0) == absent.reason(1) == "gone: field required: expected an integer (long)"


def test_a_nan_in_a_float_column_is_a_missing_value() -> None:
    optional = FeatureSchema([Column("amount", "double", required=False), Column("ratio", "double")])
    checked = optional.validate_table(pa.table({"amount": [math.nan, 1.0], "ratio": [1.0, math.nan]}))
    assert checked.valid.tolist() == [True, False]
    assert checked.reason(1) == "ratio: must not be null: expected a number (double)"
    assert math.isnan(checked.frame["amount"].iloc[0])
