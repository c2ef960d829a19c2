"""Batch rows in the shape the monitor's label window takes."""

from __future__ import annotations

import pyarrow as pa

from flows.monitor.batch import batch_labels


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
