"""Joining batch rows to the inference log's: shapes and types."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from flows.monitor.batch import batch_labels, union


def test_union_fills_missing_columns_and_widens_types() -> None:
    served = pa.table({"x": pa.array([1, 2], pa.int64()), "_latency_ms": [1.0, 2.0]})
    landed = pa.table({"x": pa.array([0.5], pa.float64()), "_label": [1.0]})

    both = union(served, landed)

    assert both is not None and both.num_rows == 3
    assert both.schema.field("x").type == pa.float64()
    assert both.column("_latency_ms").null_count == 1 and both.column("_label").null_count == 2


def test_union_keeps_the_first_tables_rows_when_a_type_cannot_be_unified(caplog: pytest.LogCaptureFixture) -> None:
    served = pa.table({"x": pa.array([1.0, 2.0])})
    landed = pa.table({"x": pa.array([["a"]], pa.list_(pa.string()))})

    with caplog.at_level(logging.WARNING):
        both = union(served, landed)

    assert both is not None and both.num_rows == 2
    assert "do not fit" in caplog.text


def test_batch_labels_take_only_labeled_rows_in_the_feedback_join_shape() -> None:
    ts = pa.array([0, 1, 2], pa.timestamp("us", tz="UTC"))
    rows = pa.table(
        {
            "x": [0.1, 0.2, 0.3],
            "_request_id": ["batch:a:0", "batch:a:1", "batch:a:2"],
            "_ts": ts,
            "_model_version": ["3", "3", "3"],
            "_prediction": [1.0, 0.0, 1.0],
            "_score": [0.9, 0.2, 0.7],
            "_label": pa.array([1.0, None, 0.0]),
        }
    )

    labeled = batch_labels(rows)

    assert labeled is not None
    assert labeled.column_names == ["request_id", "label", "ts", "_prediction", "_score", "_model_version", "x"]
    assert labeled.column("request_id").to_pylist() == ["batch:a:0", "batch:a:2"]
    assert batch_labels(rows.drop_columns(["_label"])) is None
