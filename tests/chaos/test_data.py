"""Data faults on real files and the rows-lost accounting against a real Delta lake."""

from __future__ import annotations

import io
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import _landing, ledger
from chaos.data import actions, probes
from checkpoints import Lake
from checkpoints.incidents import IncidentLog, State
from flows.demo.data import write_batches


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    write_batches(str(folder), batches=2, rows=300, seed=5)
    return folder


@pytest.mark.parametrize("mode", ["truncate", "garbage"])
def test_unreadable_corruptions(landing: Path, config: dict[str, Any], mode: str) -> None:
    done = actions.corrupt_batch(str(landing), mode, configuration=config)
    path = Path(done["path"])
    assert path.name == "batch-00002.parquet" and path.parent == landing
    assert done["source"].endswith("batch-00001.parquet")
    with pytest.raises(Exception):  # noqa: B017 - pyarrow raises several kinds for a broken file
        pq.read_table(path)
    assert _landing.sha256(path) == done["sha256"]
    assert ledger.current_run(config)[-1].detail["paths"] == [str(path)]


def test_schema_change_renames_a_column(landing: Path) -> None:
    done = actions.corrupt_batch(str(landing), "schema", column="amount")
    names = pq.read_table(done["path"]).column_names
    assert "amount" not in names and "amount_v2" in names


def test_nulls_blank_a_share_of_a_column(landing: Path) -> None:
    done = actions.corrupt_batch(str(landing), "nulls", fraction=0.3, seed=1)
    column = pq.read_table(done["path"]).column("amount")  # the first float column of the stream
    assert 0.2 < column.null_count / len(column) < 0.4
    assert "of 'amount' set to null" in done["detail"]


def test_csv_batches_stay_csv(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    out = io.BytesIO()
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table({"x": [1.5, 2.5, 3.5], "y": ["a", "b", "c"]}), out)
    (folder / "batch-00007.csv").write_bytes(out.getvalue())
    done = actions.corrupt_batch(str(folder), "nulls", column="x", fraction=1.0)
    assert done["path"].endswith("batch-00008.csv")
    assert pacsv.read_csv(done["path"]).column("x").null_count == 3


def test_bad_arguments(landing: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        actions.corrupt_batch(str(landing), "fire")
    with pytest.raises(ValueError, match="not in the batch"):
        actions.corrupt_batch(str(landing), "nulls", column="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ActivityFailed, match="no batch"):
        actions.corrupt_batch(str(tmp_path / "empty"), "garbage")


@pytest.mark.slow
def test_inject_drift_then_undo(landing: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    stream = tmp_path / "stream.parquet"
    write_batches(str(tmp_path / "s"), batches=1, rows=300, seed=5)
    (tmp_path / "s" / "batch-00000.parquet").rename(stream)
    original = stream.read_bytes()
    done = actions.inject_drift(
        str(landing),
        "covariate",
        magnitude=2.0,
        batches=2,
        rows=300,
        seed=5,
        stream_file=str(stream),
        configuration=config,
    )
    assert [Path(p).name for p in done["paths"]] == ["batch-00002.parquet", "batch-00003.parquet"]
    assert done["drift"] == "covariate:2"
    drifted = pq.read_table(stream).column("payment_gateway").to_pylist()
    assert drifted.count("gw_nova") > 0.3 * len(drifted)  # the new gateway takes min(0.9, 0.3 * 2) of rows
    undone = actions.remove_injected_batches(str(landing), configuration=config)
    assert sorted(undone["removed"]) == ["batch-00002.parquet", "batch-00003.parquet"]
    assert stream.read_bytes() == original
    assert sorted(p.name for p in _landing.batch_files(landing)) == ["batch-00000.parquet", "batch-00001.parquet"]
    assert ledger.current_run(config)[-1].event == "restore"


def test_inject_drift_checks_its_arguments(landing: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        actions.inject_drift(str(landing), "seasonal")
    with pytest.raises(ValueError, match="magnitude"):
        actions.inject_drift(str(landing), "concept", magnitude=0)


# -- rows lost --------------------------------------------------------------------------
def _land(lake: Lake, path: Path) -> None:
    table = pq.read_table(path)
    lake.append(
        "bronze",
        table.append_column("_sha256", pa.array([_landing.sha256(path)] * table.num_rows)),
        key=_landing.sha256(path),
    )


def test_rows_lost_both_ways(landing: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    first, second = _landing.batch_files(landing)
    _land(lake, first)
    bad = actions.corrupt_batch(str(landing), "garbage")
    lake.quarantine(Path(bad["path"]).read_bytes(), bad["path"], "unreadable")
    # The second batch is in neither place; the quarantined one was repaired by nobody: both lost.
    assert probes.rows_lost(str(landing), str(lake.root)) == 300 + 1
    with pytest.raises(ActivityFailed, match=r"1 landed, 0 repaired, 0 escalated, 1 quarantined unrepaired, 1 missing"):
        probes.seconds_until_no_rows_lost(str(landing), str(lake.root), timeout=0.5, interval=0.1, configuration=config)
    _land(lake, second)
    assert probes.rows_lost(str(landing), str(lake.root)) == 1  # quarantine alone is not "not lost"
    clean = landing / f"backfill-{Path(bad['path']).name}"  # the fallback source's clean copy
    pq.write_table(pq.read_table(second), clean, compression="gzip")
    # Backfilled but not landed yet: the clean copy is the missing file now (its 300 rows).
    assert probes.rows_lost(str(landing), str(lake.root)) == 300
    _land(lake, clean)
    assert probes.rows_lost(str(landing), str(lake.root)) == 0
    found = _landing.account(str(landing), str(lake.root))
    assert found.repaired == (Path(bad["path"]).name,) and found.quarantined == ()
    assert probes.seconds_until_no_rows_lost(str(landing), str(lake.root), timeout=5, configuration=config) < 5


def test_a_quarantined_file_an_escalation_names_is_awaiting_a_person(landing: Path, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for path in _landing.batch_files(landing):
        _land(lake, path)
    bad = actions.corrupt_batch(str(landing), "truncate")
    record = lake.quarantine(Path(bad["path"]).read_bytes(), bad["path"], "torn")
    assert probes.rows_lost(str(landing), str(lake.root)) >= 1
    incidents = IncidentLog(lake)
    evidence = {"quarantined": [{"source": bad["path"], "stored_at": record.stored_at, "reason": "torn"}]}
    incident = incidents.open("data_quality", evidence)
    assert probes.rows_lost(str(landing), str(lake.root)) >= 1  # open is not escalated: a person was not told
    incidents.advance(incident, State.ESCALATED, detail="no remedy left")
    found = _landing.account(str(landing), str(lake.root))
    assert found.rows_lost == 0 and found.escalated == (Path(bad["path"]).name,)
    # A torn file has no row count: it is counted as a file, not as a made-up number of rows.
    assert found.rows_escalated == 0 and found.unreadable_escalated == 1
    assert "; escalated, 1 unreadable file awaiting a person" in found.summary()


def test_rows_awaiting_a_person_are_counted_before_the_rollback_removes_the_file(
    landing: Path, tmp_path: Path, config: dict[str, Any]
) -> None:
    """The suite's table says "escalated, N rows awaiting a person" although the rollback deletes the batch."""
    from chaos import control
    from flows.chaos_suite.journal import measure

    lake = Lake(tmp_path / "lake")
    for path in _landing.batch_files(landing):
        _land(lake, path)
    bad = actions.corrupt_batch(str(landing), "nested", configuration=config)
    record = lake.quarantine(Path(bad["path"]).read_bytes(), bad["path"], "struct column")
    incidents = IncidentLog(lake)
    incident = incidents.open("data_quality", {"quarantined": [{"source": bad["path"], "stored_at": record.stored_at}]})
    incidents.advance(incident, State.ESCALATED, detail="no remedy left")
    env = {
        "SELFHEAL_CHAOS_LEDGER": config["selfheal_ledger"],
        "SELFHEAL_CHAOS_LANDING": str(landing),
        "SELFHEAL_CHAOS_LAKE": str(lake.root),
    }
    control.before_rollback_control({}, configuration={**config, "landing": str(landing), "lake_root": str(lake.root)})
    actions.remove_injected_batches(str(landing), configuration=config)
    assert _landing.account(str(landing), str(lake.root)).rows_escalated == 0  # the file is gone now
    assert measure({}, env) == {"rows_lost": 0, "rows_awaiting": 300, "unreadable_awaiting": 0}
    # Without the control's count (an experiment run some other way) the landing zone now is what is left.
    ledger.record(config, "run", experiment="again")
    assert measure({}, env) == {"rows_lost": 0, "rows_awaiting": 0, "unreadable_awaiting": 0}  # the landing zone now


def test_an_unreadable_missing_file_still_counts(landing: Path, tmp_path: Path) -> None:
    actions.corrupt_batch(str(landing), "garbage")
    lake = Lake(tmp_path / "lake")
    for path in _landing.batch_files(landing)[:2]:
        _land(lake, path)
    assert probes.rows_lost(str(landing), str(lake.root)) == 1


# -- landing-zone faults ----------------------------------------------------------------
def test_nested_turns_a_column_into_structs(landing: Path) -> None:
    done = actions.corrupt_batch(str(landing), "nested", column="amount")
    field = pq.read_table(done["path"]).schema.field("amount")
    assert pa.types.is_struct(field.type) and [f.name for f in field.type] == ["value", "unit"]


@pytest.mark.slow
def test_a_batch_written_in_pieces_is_half_there_during_the_pause(
    landing: Path, tmp_path: Path, config: dict[str, Any]
) -> None:
    target = landing / "batch-00002.csv"
    seen: list[bytes] = []

    def peek() -> None:  # a reader during the pause sees the first piece only
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        seen.append(target.read_bytes())

    reader = threading.Thread(target=peek)
    reader.start()
    done = actions.land_batch_in_pieces(str(landing), pause_seconds=5, fmt="csv", rows=200, configuration=config)
    reader.join()
    whole = target.read_bytes()
    assert done["path"] == str(target) and done["sha256"] == _landing.sha256(target)
    assert seen[0] == whole[: done["first_piece"]] and 0 < len(seen[0]) < len(whole)
    assert seen[0].endswith(b"\n")  # whole rows flushed so far: a CSV that parses
    assert pacsv.read_csv(target).num_rows == 200
    assert ledger.current_run(config)[-1].detail["paths"] == [str(target)]


def test_resend_batch_same_rows_other_bytes(landing: Path, config: dict[str, Any]) -> None:
    done = actions.resend_batch(str(landing), configuration=config)
    first = landing / "batch-00000.parquet"
    assert done["path"].endswith("batch-00002.parquet") and done["source"] == str(first)
    resent, original = pq.read_table(done["path"]), pq.read_table(first)
    assert resent.column_names == list(reversed(original.column_names))
    assert resent.select(original.column_names).equals(original)
    assert _landing.sha256(Path(done["path"])) != _landing.sha256(first)


def test_non_file_entries_then_undo(landing: Path, config: dict[str, Any]) -> None:
    newest = landing / "batch-00001.parquet"
    done = actions.add_non_file_entries(str(landing), configuration=config)
    directory, link, fifo = (Path(p) for p in done["paths"])
    assert [p.name for p in (directory, link, fifo)] == [f"batch-0000{i}.parquet" for i in (2, 3, 4)]
    assert directory.is_dir() and link.is_symlink() and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [p.name for p in _landing.batch_files(landing)] == ["batch-00000.parquet", "batch-00001.parquet"]
    assert _landing.next_index(landing) == 5  # the next batch does not collide with them
    undone = actions.remove_injected_batches(str(landing), configuration=config)
    assert sorted(undone["removed"]) == [f"batch-0000{i}.parquet" for i in (2, 3, 4)]
    visible = sorted(p.name for p in landing.iterdir() if not p.name.startswith("."))
    assert visible == ["batch-00000.parquet", "batch-00001.parquet"]
    assert (landing / ".batch-00003.parquet.removed").is_symlink()  # set aside, not followed
    assert newest.exists()  # the symlink went, not what it pointed at
    assert _landing.next_index(landing) == 5  # a name set aside is never used again
    with pytest.raises(ValueError, match="kinds must be among"):
        actions.add_non_file_entries(str(landing), kinds=["socket"])


def _land_ids(lake: Lake, path: Path, ids: list[str] | None = None) -> None:
    table = pq.read_table(path).select(["transaction_id"])
    if ids is not None:
        table = pa.table({"transaction_id": ids})
    lake.append("bronze", table, key=f"{path.name}:{len(table)}:{ids is not None}")


def test_rows_landed_once_both_ways(landing: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    assert probes.seconds_until_fault_rows_landed_once(str(lake.root), ["transaction_id"], configuration=config) == 0
    first = landing / "batch-00000.parquet"
    _land_ids(lake, first)
    done = actions.resend_batch(str(landing), configuration=config)
    assert (
        probes.seconds_until_fault_rows_landed_once(str(lake.root), ["transaction_id"], timeout=5, configuration=config)
        < 5
    )  # landed once (by the first batch): what a pipeline that deduplicates by id leaves
    _land_ids(lake, Path(done["path"]))  # what one that does not leaves
    with pytest.raises(ActivityFailed, match="300 rows in 1 file.*300 in bronze more than once, 0 not at all"):
        probes.seconds_until_fault_rows_landed_once(
            str(lake.root), ["transaction_id"], timeout=0.5, interval=0.1, configuration=config
        )


def test_rows_landed_once_fails_at_once_when_the_fault_file_was_quarantined(
    landing: Path, tmp_path: Path, config: dict[str, Any]
) -> None:
    lake = Lake(tmp_path / "lake")
    done = actions.resend_batch(str(landing), configuration=config)
    lake.quarantine(b"half a file", done["path"], "truncated parquet file")
    with pytest.raises(ActivityFailed, match="cannot be met: quarantined since the fault.*batch-00002.parquet"):
        probes.seconds_until_fault_rows_landed_once(
            str(lake.root), ["transaction_id"], timeout=30, configuration=config
        )


def test_renamed_rows_count_only_once_and_as_sent(landing: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    lake_root = str(tmp_path / "lake")
    assert probes.seconds_until_renamed_rows_landed(lake_root, ["transaction_id"], configuration=config) == 0
    done = actions.land_renamed_batch(str(landing), rows=50, seed=11, configuration=config)
    sent = pq.read_table(done["path"])
    assert (done["column"], done["renamed_to"]) == ("amount", "txn_amount") and "amount" not in sent.column_names
    with pytest.raises(ActivityFailed, match="50 rows in 1 renamed batch.*50 not in bronze"):
        probes.seconds_until_renamed_rows_landed(lake_root, ["transaction_id"], 0.5, interval=0.1, configuration=config)
    ids, values = sent.column("transaction_id"), sent.column("txn_amount").to_pylist()
    imputed = Lake(tmp_path / "imputed")  # the rows landed, but not with the values they were sent with
    imputed.append("bronze", pa.table({"transaction_id": ids, "amount": [v + 1.0 for v in values]}))
    with pytest.raises(ActivityFailed, match="0 not in bronze, 0 more than once, 50 with another value than sent"):
        probes.seconds_until_renamed_rows_landed(
            str(imputed.root), ["transaction_id"], 0.5, interval=0.1, configuration=config
        )
    Lake(lake_root).append("bronze", pa.table({"transaction_id": ids, "amount": values}))
    assert probes.seconds_until_renamed_rows_landed(lake_root, ["transaction_id"], 5, configuration=config) < 5
