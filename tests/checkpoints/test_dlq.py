"""The dead-letter queue on a real table: a batch enters once, each replay attempt is recorded once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from checkpoints import CheckpointNotFound, Lake
from checkpoints.dlq import DLQ, DeadLetter, DeadLetterQueue, batch_id


def _letters(
    batch: str, rows: range, reason: str = "amount: expected a number (double), got string 'n/a'"
) -> list[DeadLetter]:
    return [
        DeadLetter(
            batch, "batch.parquet", "9f" * 32, row, "predictions", "invalid", reason, data={"amount": "n/a", "row": row}
        )
        for row in rows
    ]


def test_a_batch_enters_once_and_its_rows_wait_until_replayed(lake: Lake) -> None:
    queue = DeadLetterQueue(lake)
    first, second = batch_id("rows", "predictions", "file:ab", 0), batch_id("chunk", "predictions", "file:ab", 0)
    assert first != second != batch_id("rows", "scores", "file:ab", 0)
    assert queue.enqueue(_letters(first, range(3))) and not queue.enqueue(_letters(first, range(3)))
    assert queue.enqueue(_letters(second, range(3, 5), reason="the write to predictions failed: disk full"))
    assert lake.read(DLQ).num_rows == 5 and queue.has_batch(first)

    rows = queue.rows()[second]
    replayed = [rows[0].event("replayed", 1, "landed in predictions", "4", landed_version=7)]
    failed = [rows[1].event("failed", 1, "the write to predictions failed: disk full", "4")]
    assert queue.record(replayed + failed) and not queue.record(replayed + failed)
    waiting = queue.waiting()
    assert [r.row for r in waiting[first]] == [0, 1, 2] and [r.row for r in waiting[second]] == [4]
    assert waiting[second][0].data == {"amount": "n/a", "row": 4}  # the queued data comes with the newest state
    assert waiting[second][0].status == "failed" and waiting[second][0].attempt == 1
    landed = queue.rows()[second][0]
    assert (landed.status, landed.landed_version, landed.data["row"]) == ("replayed", 7, 3)
    assert list(queue.waiting([second])) == [second]


def test_find_names_one_waiting_batch_per_prefix(lake: Lake) -> None:
    queue = DeadLetterQueue(lake)
    for batch in ("3f2a9c01be77", "3f2a77aa0000"):
        queue.enqueue(_letters(batch, range(1)))
    assert queue.find(["3f2a9", "3F2A9C01BE77", "3f2a7"]) == ["3f2a9c01be77", "3f2a77aa0000"]
    with pytest.raises(CheckpointNotFound, match="no waiting dead-letter batch with id 'zz'"):
        queue.find(["zz"])
    with pytest.raises(CheckpointNotFound, match=r"2 waiting batches with id '3f2a'.*give more digits"):
        queue.find(["3f2a"])
    with pytest.raises(ValueError, match="one batch"):
        queue.enqueue(_letters("a", range(1)) + _letters("b", range(1)))
    with pytest.raises(ValueError, match="attempt"):
        queue.record([replace(_letters("a", range(1))[0], attempt=0)])
