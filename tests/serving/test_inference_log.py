"""The inference-log writer on a real Delta lake: batching, dead letter, replay exactly once, close."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from checkpoints import Lake
from serving.inference_log import INFERENCE_TABLE, InferenceLog, LogBatch, inference_schema
from serving.metrics import ServingMetrics

SCHEMA = inference_schema([pa.field("amount", pa.float64()), pa.field("channel", pa.string())])


def batch(start: int, rows: int, *, score: bool = True) -> LogBatch:
    now = time.time_ns() // 1000
    ids = [f"r{start + i}" for i in range(rows)]
    columns = {
        "amount": [float(start + i) for i in range(rows)],
        "channel": ["pos"] * rows,
        "_request_id": ids,
        "_ts": [now] * rows,
        "_model_version": ["3"] * rows,
        "_served_by": ["primary"] * rows,
        "_prediction": np.ones(rows),
        "_score": np.full(rows, 0.7) if score else None,
        "_latency_ms": [1.5] * rows,
    }
    return LogBatch(INFERENCE_TABLE, SCHEMA, columns, rows)


def request_ids(lake: Lake) -> list[str]:
    return sorted(lake.read(INFERENCE_TABLE, columns=["_request_id"]).column(0).to_pylist())


def test_rows_are_written_in_batches_with_the_contract_schema(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    log = InferenceLog(lake, tmp_path / "dl", batch_rows=10, flush_seconds=3600)
    log.start()
    for i in range(4):
        assert log.submit(batch(i * 3, 3, score=i % 2 == 0))
    assert log.flush()
    log.close()
    table = lake.read(INFERENCE_TABLE)
    assert table.num_rows == 12
    assert lake.version(INFERENCE_TABLE) <= 1  # one or two appends, not one per request
    assert table.schema.field("_ts").type == pa.timestamp("us", tz="UTC")
    scores = table.column("_score").to_pylist()
    assert scores.count(None) == 6 and scores.count(0.7) == 6


def test_an_unwritable_lake_spills_to_dead_letter_and_replays_exactly_once(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    root.write_text("a file where the lake's folder should be")  # every append fails
    metrics = ServingMetrics()
    log = InferenceLog(Lake(root), tmp_path / "dl", batch_rows=1000, flush_seconds=3600, metrics=metrics)
    log.start()
    log.submit(batch(0, 5))
    log.flush()
    log.submit(batch(5, 2))
    log.close()  # the graceful stop spills what the lake refuses
    files = log.dead_letters()
    assert len(files) == 2 and all(f.parent.name == INFERENCE_TABLE for f in files)
    assert metrics.log_rows_dead_lettered.labels(INFERENCE_TABLE)._value.get() == 7

    root.unlink()  # the lake is back
    lake = Lake(root)
    survivor = InferenceLog(lake, tmp_path / "dl")
    copy = files[0].read_bytes()
    assert survivor.replay() == 7
    assert request_ids(lake) == sorted(f"r{i}" for i in range(7))
    assert survivor.dead_letters() == []
    files[0].write_bytes(copy)  # a second worker replays the same file again...
    assert survivor.replay() == 0  # ...and its key makes it a no-op
    assert len(request_ids(lake)) == 7 and survivor.dead_letters() == []


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    log = InferenceLog(Lake(tmp_path / "lake"), tmp_path / "dl", queue_rows=5, metrics=metrics)
    assert log.submit(batch(0, 4))
    assert not log.submit(batch(4, 4))
    assert metrics.log_rows_dropped._value.get() == 4
    log.close()  # without a thread: writes synchronously
    assert request_ids(Lake(tmp_path / "lake")) == [f"r{i}" for i in range(4)]


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    log = InferenceLog(lake, tmp_path / "dl", batch_rows=10_000, flush_seconds=3600)
    log.start()
    for i in range(50):
        log.submit(batch(i * 2, 2))
    assert not lake.exists(INFERENCE_TABLE)
    log.close()
    assert len(request_ids(lake)) == 100


def test_queued_batches_make_the_table_their_rows_make_in_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numpy and list columns and all-null ones alike, converted in chunks; the table is the one the rows make."""
    monkeypatch.setattr("serving.inference_log.CONVERT_ROWS", 64)
    lake = Lake(tmp_path / "lake")
    log = InferenceLog(lake, tmp_path / "dl", batch_rows=10_000, flush_seconds=3600)
    batches = [batch(8 * i, 8, score=i % 3 != 0) for i in range(100)]  # 800 rows, some without scores
    for b in batches:
        assert log.submit(b)
    (queued,) = log._take()

    def as_rows(b: LogBatch) -> list[dict[str, object]]:
        cols = {f.name: b.columns.get(f.name) for f in SCHEMA}
        return [{n: None if v is None else v[i] for n, v in cols.items()} for i in range(b.rows)]

    expected = pa.Table.from_pylist([row for b in batches for row in as_rows(b)], schema=SCHEMA)
    converted = queued.to_arrow()
    assert converted.column(0).num_chunks == -(-800 // 64)
    assert converted.equals(expected)


def test_a_batch_whose_columns_do_not_match_its_rows_is_dropped_alone(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    metrics = ServingMetrics()
    log = InferenceLog(lake, tmp_path / "dl", batch_rows=10_000, flush_seconds=3600, metrics=metrics)
    good, bad = batch(0, 3), batch(3, 3)
    bad.columns["amount"] = [1.0]  # one value for three rows
    assert log.submit(good) and not log.submit(bad) and log.submit(batch(6, 3))
    assert metrics.log_rows_dropped._value.get() == 3
    log.close()
    assert request_ids(lake) == sorted(f"r{i}" for i in [0, 1, 2, 6, 7, 8])
