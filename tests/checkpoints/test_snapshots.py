"""Open tables kept between reads (``checkpoints.snapshots``): cheap, and never stale or torn."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from checkpoints import Lake
from checkpoints.exceptions import CheckpointCorrupted

ROOT = Path(__file__).resolve().parents[2]


def _append_from_another_process(lake_root: Path, table: str, value: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "tests.checkpoints._writer", "append", str(lake_root), str(value), table],
        cwd=ROOT,
        check=True,
        timeout=120,
    )


def _values(lake: Lake, table: str) -> list[int]:
    return sorted(lake.read(table).column("x").to_pylist())


def test_a_read_reuses_the_open_table_and_sees_commits_made_by_another_process(lake: Lake, lake_root: Path) -> None:
    lake.append("t", pa.table({"x": [0]}))
    first = lake._open("t")
    assert lake._open("t") is first  # no log replay: the same open table
    _append_from_another_process(lake_root, "t", 1)
    _append_from_another_process(lake_root, "t", 2)
    assert lake._open("t") is first
    assert lake.version("t") == 2
    assert _values(lake, "t") == [0, 1, 2]
    assert sorted(lake.scan("t").column("x").to_pylist()) == [0, 1, 2]  # type: ignore[union-attr]
    assert lake.history("t", limit=1)[0]["version"] == 2


def test_a_pinned_version_is_its_own_object_and_a_later_read_does_not_move_it(lake: Lake) -> None:
    lake.append("t", pa.table({"x": [0]}))
    pinned = lake._open("t", 0)
    assert pinned is not lake._open("t")
    lake.append("t", pa.table({"x": [1]}))
    assert _values(lake, "t") == [0, 1]
    assert pinned.version() == 0
    assert lake.read("t", version=0).column("x").to_pylist() == [0]


def test_a_torn_newest_entry_is_still_detected_and_never_kept(lake: Lake, lake_root: Path) -> None:
    lake.append("t", pa.table({"x": [0]}))
    assert _values(lake, "t") == [0]  # the table is open at version 0
    (lake_root / "t" / "_delta_log" / f"{1:020d}.json").write_bytes(b"")  # a writer died mid-commit
    with pytest.raises(CheckpointCorrupted):
        lake.read("t")
    assert lake.scan("t") is not None  # a scan does not judge the newest entry, and must not keep it open
    assert lake.recover("t") == 0
    _append_from_another_process(lake_root, "t", 1)  # version 1 again, written whole this time
    assert _values(lake, "t") == [0, 1]


def test_a_table_made_again_at_the_same_place_is_read_afresh(lake: Lake, lake_root: Path) -> None:
    """The kept table's log entry was replaced (same version numbers, other commits): no stale read."""
    lake.append("t", pa.table({"x": [0]}))
    lake.append("t", pa.table({"x": [1]}))
    assert _values(lake, "t") == [0, 1]
    shutil.rmtree(lake_root / "t")
    _append_from_another_process(lake_root, "t", 7)
    _append_from_another_process(lake_root, "t", 8)
    assert _values(lake, "t") == [7, 8]


def test_each_thread_has_its_own_open_table(lake: Lake) -> None:
    """A snapshot a thread checks and commits against is never moved by another thread's read."""
    lake.append("t", pa.table({"x": [0]}))
    here = lake._open("t")
    there: list[object] = []
    thread = threading.Thread(target=lambda: there.append(lake._open("t")))
    thread.start()
    thread.join()
    assert there and there[0] is not here
