"""The Delta store on real tables: exactly-once, crash safety, corruption, restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from checkpoints import CheckpointCorrupted, CheckpointError, CheckpointNotFound, Lake
from checkpoints.exceptions import SchemaMismatch

REPO = Path(__file__).resolve().parents[2]


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "x": [float(i) for i in range(start, start + n)]})


def _writer(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_BACKTRACE": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoints._writer", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_append_is_exactly_once_per_key(lake: Lake) -> None:
    v0 = lake.append("bronze", _table(3), key="a")
    v1 = lake.append("bronze", _table(3, 3), key="b")
    again = lake.append_once("bronze", _table(3), key="a")
    assert (v0, v1) == (0, 1)
    assert again.duplicate and again.version == 0 and again.rows == 0
    assert lake.read("bronze").num_rows == 6
    assert lake.has_key("bronze", "a") and not lake.has_key("bronze", "c")


def test_three_processes_fifty_appends_twenty_percent_repeated(lake: Lake, lake_root: Path) -> None:
    start_at = time.time() + 3.0
    procs = [_writer("concurrent", str(lake_root), str(w), str(start_at)) for w in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    table = lake.read("events")
    keys = table.column("key").to_pylist()
    counts = {k: keys.count(k) for k in set(keys)}
    # 3 x 40 own keys + 10 shared keys, each written exactly once with its 5 rows.
    assert len(counts) == 3 * 40 + 10
    assert set(counts.values()) == {5}
    shared = pc.filter(table, pc.starts_with(table.column("key"), "shared-"))
    assert shared.num_rows == 50


def test_kill_9_mid_append_leaves_previous_version_readable(lake: Lake, lake_root: Path) -> None:
    proc = _writer("big", str(lake_root), "0")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("committed 0")
    time.sleep(0.3)  # the next 2M-row append is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    version = lake.version("big")
    table = lake.read("big")
    assert table.num_rows == (version + 1) * 2_000_000
    assert lake.read("big", version=0).num_rows == 2_000_000


@pytest.mark.parametrize("damage", ["torn", "garbage", "empty"])
def test_garbled_newest_log_entry_raises_checkpoint_corrupted(lake: Lake, lake_root: Path, damage: str) -> None:
    for i in range(3):
        lake.append("silver", _table(2, 2 * i))
    entry = lake_root / "silver" / "_delta_log" / f"{2:020d}.json"
    text = entry.read_text()
    entry.write_text({"torn": text[: len(text) // 2], "garbage": "\x00{{not json", "empty": ""}[damage])
    with pytest.raises(CheckpointCorrupted) as info:
        lake.read("silver")
    assert info.value.table == "silver" and info.value.version == 2
    assert "selfheal lake recover silver" in str(info.value)
    # The documented recovery: set the entry aside, read the last good version.
    assert lake.recover("silver") == 1
    assert lake.read("silver").num_rows == 4
    assert (lake_root / "silver" / "_delta_log" / "_corrupted" / entry.name).exists()
    # And the table takes writes again after recovery.
    assert lake.append("silver", _table(2, 100)) == 2


def test_recover_refuses_a_healthy_table(lake: Lake) -> None:
    lake.append("t", _table(1))
    with pytest.raises(CheckpointNotFound):
        lake.recover("t")


def test_read_as_of_time_and_errors(lake: Lake) -> None:
    lake.append("t", _table(2))
    time.sleep(0.05)
    from datetime import UTC, datetime

    between = datetime.now(UTC)
    time.sleep(0.05)
    lake.append("t", _table(2, 2))
    assert lake.read("t", as_of=between).num_rows == 2
    with pytest.raises(CheckpointNotFound):
        lake.read("missing")
    with pytest.raises(CheckpointNotFound):
        lake.read("t", version=9)
    with pytest.raises(CheckpointError):
        lake.append("t", pa.table({"other": ["x"]}))
    with pytest.raises(ValueError):
        lake.append("../escape", _table(1))


def test_restore_releases_keys_whose_rows_it_removed(lake: Lake) -> None:
    """txn actions outlive a restore; a key whose rows were restored away must be writable again."""
    lake.append("bronze", _table(3), key="a")
    lake.append("bronze", _table(3, 3), key="b")
    lake.restore("bronze", 0)
    assert lake.has_key("bronze", "a") and not lake.has_key("bronze", "b")
    assert not lake.append_once("bronze", _table(3, 3), key="b").duplicate
    assert lake.read("bronze").num_rows == 6
    # Restoring to a version that held the rows makes the key live again: no duplicate.
    lake.restore("bronze", 0)
    lake.restore("bronze", 1)
    assert lake.has_key("bronze", "b")
    assert lake.append_once("bronze", _table(3, 3), key="b").duplicate
    assert lake.read("bronze").num_rows == 6


def test_has_rows_reads_the_log_only(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    assert not lake.has_rows("t")  # no table
    lake.append("t", pa.table({"a": [1]}))
    assert lake.has_rows("t")
    lake.overwrite("t", pa.table({"a": pa.array([], pa.int64())}))
    assert not lake.has_rows("t")  # a table left empty (a rolled-back first run)


def test_a_value_that_cannot_be_cast_to_the_tables_type_is_a_schema_mismatch(lake: Lake) -> None:
    lake.append("t", pa.table({"n": pa.array([1, 2], pa.int64())}), key="a")

    with pytest.raises(SchemaMismatch, match="Cannot cast"):
        lake.append("t", pa.table({"n": pa.array(["yes"], pa.string())}), key="b")

    assert lake.read("t").num_rows == 2
    assert lake.append("t", pa.table({"n": pa.array([3], pa.int64())}), key="c") == lake.version("t")


@pytest.mark.parametrize("write", ["append", "overwrite"])
def test_float_columns_are_written_without_a_dictionary_and_the_rest_with_one(
    lake: Lake, lake_root: Path, write: str
) -> None:
    """Continuous floats skip dictionary encoding (it never pays for them); codes and categories keep it."""
    import pyarrow.parquet as pq

    data = pa.table({"amount": [0.5, 1.5, 2.5] * 100, "gateway": ["a", "b", "c"] * 100, "n": [1, 2, 3] * 100})
    getattr(lake, write)("t", data)
    files = list((lake_root / "t").glob("*.parquet"))
    assert len(files) == 1
    chunks = pq.ParquetFile(files[0]).metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(3)}
    assert not any("DICTIONARY" in e for e in encodings["amount"]), encodings
    assert any("DICTIONARY" in e for e in encodings["gateway"]) and any("DICTIONARY" in e for e in encodings["n"])
    assert {chunks.column(i).compression for i in range(3)} == {"SNAPPY"}  # delta-rs's default compression kept
    assert chunks.column(0).statistics.has_min_max  # data skipping still has its statistics
    assert lake.read("t").equals(data)


def test_an_ordered_read_gives_a_versions_rows_in_the_order_their_files_were_added(lake: Lake) -> None:
    for n in range(6):
        lake.append("log", _table(2, 2 * n), key=f"k{n}")
    ordered = lake.read("log", ordered=True).column("id").to_pylist()
    assert ordered == list(range(12))
    lake.maintain("log")  # a checkpoint: the log is now read from it, not from its entries
    assert lake.read("log", version=5, ordered=True).column("id").to_pylist() == ordered
    assert lake.read("log", version=2, ordered=True, columns=["id"]).column("id").to_pylist() == list(range(6))
