"""The shared table contracts on real tables: row dataclasses, leases, the windowed scan, metric rows."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import pyarrow as pa

from checkpoints import Lake
from checkpoints.leases import LEASES, Lease, claim, current_lease, take
from checkpoints.metrics import append_metric_rows, metric_values
from checkpoints.rows import arrow_schema, from_row, to_row, to_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Color(StrEnum):
    RED = "red"


@dataclass(frozen=True)
class _Row:
    name: str
    n: int
    at: datetime
    color: Color
    phase: Literal["a", "b"]
    score: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def test_a_row_dataclass_declares_its_schema_and_round_trips(lake: Lake) -> None:
    schema = arrow_schema(_Row)
    assert schema.names == ["name", "n", "at", "color", "phase", "score", "tags", "note"]
    utc = "timestamp[us, tz=UTC]"
    assert [str(t) for t in schema.types] == ["string", "int64", utc, "string", "string", "double", "string", "string"]
    row = _Row("x", 1, T0, Color.RED, "b", tags={"k": [1, 2]})
    assert to_row(row)["tags"] == '{"k": [1, 2]}' and to_row(row)["color"] == "red"
    lake.append("rows", to_table([row]))
    assert [from_row(_Row, r) for r in lake.read("rows").to_pylist()] == [row]
    # Nulls, and columns a row written earlier does not have, take the field's default.
    assert from_row(_Row, {"name": "y", "n": 2, "at": T0, "color": "red", "phase": "a", "note": None}).note == ""


def test_a_lease_holds_until_its_holder_dies_or_it_expires(lake: Lake) -> None:
    assert claim(lake, "inc-1", T0) and claim(lake, "inc-1", T0)  # taken, then kept
    mine = Lease("inc-1", 0, socket.gethostname(), os.getpid(), T0 + timedelta(minutes=10))
    assert current_lease(lake, "inc-1") == mine
    other = Lease("inc-2", 0, "elsewhere", 1, T0 + timedelta(minutes=10))
    assert take(lake, other) and not take(lake, other)  # one winner per (incident, n)
    assert not claim(lake, "inc-2", T0)  # a live holder on another host
    assert claim(lake, "inc-2", T0 + timedelta(minutes=11))  # until it expires
    assert lake.read(LEASES).num_rows == 3


def test_window_reads_start_exclusive_end_inclusive_across_files(lake: Lake) -> None:
    for minute in range(4):
        at = T0 + timedelta(minutes=minute)
        lake.append("log", pa.table({"_ts": pa.array([at], pa.timestamp("us", tz="UTC")), "v": [minute]}))
    rows = lake.window("log", "_ts", T0, T0 + timedelta(minutes=2))
    assert rows is not None and sorted(rows.column("v").to_pylist()) == [1, 2]
    assert lake.window("absent", "_ts", None, T0) is None
    last = lake.last_commit("log")
    assert last is not None and abs((datetime.now(UTC) - last).total_seconds()) < 60


def test_metric_values_filter_by_name_and_time(lake: Lake) -> None:
    rows = [
        {"ts": T0, "name": "drift.share", "value": 0.5, "window_start": T0},
        {"ts": T0 + timedelta(minutes=1), "name": "drift.share", "value": 0.0, "window_start": T0},
        {"ts": T0 + timedelta(minutes=1), "name": "other", "value": 9.0, "labels": {"a": 1}},
    ]
    assert not append_metric_rows(lake, rows, key="monitor:1").duplicate
    assert append_metric_rows(lake, rows, key="monitor:1").duplicate
    assert metric_values(lake, "drift.share", after=T0) == [0.0]
    assert metric_values(lake, "drift.share", after=T0, column="window_start", inclusive=True) == [0.5, 0.0]
    assert metric_values(Lake(lake.root + "-empty"), "drift.share", after=T0) == []
