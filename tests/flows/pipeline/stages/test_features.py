"""Bronze rows to silver rows: locked dtypes, infinities as missing, ids and lineage kept."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from flows.pipeline.stages.features import LINEAGE, feature_columns, model_frame, to_silver

SCHEMA = {
    "age": "int64",
    "income": "float64",
    "city": "string",
    "member": "bool",
    "customer": "string",
    "label": "int64",
}


def _bronze() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": ["41", "x", None],
            "income": [1.5, np.inf, -np.inf],
            "city": ["Oslo", None, 7],
            "member": [True, False, None],
            "customer": ["c1", "c2", "c3"],
            "label": ["1", "0", "bad"],
            "_sha256": ["abc"] * 3,
            "_row": [0, 1, 2],
            "_batch_id": ["b1"] * 3,
            "_source_file": ["f.csv"] * 3,
            "_ingested_at": pd.to_datetime(["2026-01-01"] * 3, utc=True),
            "_unknown": [1, 2, 3],
        },
        index=[10, 11, 12],
    )


def test_feature_columns_skip_target_ids_and_underscored_columns_in_schema_order() -> None:
    schema = {"_row": "int64", **SCHEMA}
    assert feature_columns(schema, "label", ["customer"]) == ["age", "income", "city", "member"]
    assert feature_columns(schema, "label") == ["age", "income", "city", "member", "customer"]


def test_numbers_are_cast_to_float_and_garbage_or_infinity_becomes_missing() -> None:
    silver = to_silver(_bronze(), SCHEMA, "label", ["customer"])
    assert silver["age"].dtype == "float64" and silver["income"].dtype == "float64"
    assert silver["age"].tolist()[0] == 41.0 and silver["age"].isna().tolist() == [False, True, True]
    assert silver["income"].tolist()[0] == 1.5 and silver["income"].isna().tolist() == [False, True, True]
    assert silver["label"].tolist()[:2] == [1.0, 0.0] and math.isnan(silver["label"].iloc[2])


def test_strings_stay_objects_with_none_for_missing_and_bools_stay_nullable_bools() -> None:
    silver = to_silver(_bronze(), SCHEMA, "label", ["customer"])
    assert silver["city"].tolist() == ["Oslo", None, "7"]
    assert silver["member"].dtype == "boolean"
    assert silver["member"].tolist()[:2] == [True, False] and silver["member"].iloc[2] is pd.NA


def test_the_model_frame_reads_bools_with_nulls_and_old_float_bools_as_nullable_bools() -> None:
    table = pa.table({"member": pa.array([True, None, False]), "old": pa.array([1.0, 0.0, None]), "x": [1.0, 2, 3]})
    frame = model_frame(table, {"member": "bool", "old": "bool", "x": "float64"})
    for column in ("member", "old"):
        assert frame[column].dtype == "boolean"
    assert frame["member"].tolist()[::2] == [True, False] and frame["member"].iloc[1] is pd.NA
    assert frame["old"].tolist()[:2] == [True, False] and frame["old"].iloc[2] is pd.NA
    assert frame["x"].dtype == "float64"


def test_ids_and_lineage_are_kept_unknown_columns_dropped_and_the_index_reset() -> None:
    silver = to_silver(_bronze(), SCHEMA, "label", ["customer"])
    assert list(silver.columns) == ["age", "income", "city", "member", "customer", "label", *LINEAGE]
    assert silver["customer"].tolist() == ["c1", "c2", "c3"]
    assert silver["_row"].tolist() == [0, 1, 2]
    assert silver.index.tolist() == [0, 1, 2]


def test_a_schema_column_missing_from_the_batch_is_all_missing() -> None:
    bronze = _bronze().drop(columns=["income"])
    silver = to_silver(bronze, SCHEMA, "label", ["customer"])
    assert silver["income"].isna().all() and silver["income"].dtype == "float64"
