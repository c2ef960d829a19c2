"""Data probes: is every landing file accounted for, i.e. were rows lost.

A file is matched with the lake by its content digest, the pipeline's idempotency
key: landed (its rows are in bronze), repaired (quarantined, then re-landed by a
repair: imputed or backfilled), escalated (quarantined and named by an escalated
incident: awaiting a person), or lost (quarantined with neither, or missing).
Row-level probes count rows by their ids in bronze, read with ``deltalake`` and
pyarrow directly (not through the pipeline's own code).
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from collections import Counter
from datetime import UTC, datetime
from math import isnan
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration
from deltalake import DeltaTable

from chaos import _landing, ledger
from chaos._polling import Check, seconds_until
from checkpoints import Lake

__all__ = [
    "rows_awaiting_a_person",
    "rows_lost",
    "seconds_until_fault_rows_landed_once",
    "seconds_until_no_rows_lost",
    "seconds_until_renamed_rows_landed",
]


def rows_lost(landing_path: str, lake_root: str, bronze_table: str = "bronze") -> int:
    """Rows of landing files that are neither in bronze nor quarantined (at least 1 per unreadable file)."""
    return _landing.account(landing_path, lake_root, bronze_table).rows_lost


def rows_awaiting_a_person(landing_path: str, lake_root: str, bronze_table: str = "bronze") -> int:
    """Rows of quarantined landing files an escalated incident names: not lost, but a person must act."""
    return _landing.account(landing_path, lake_root, bronze_table).rows_escalated


def seconds_until_no_rows_lost(
    landing_path: str,
    lake_root: str,
    timeout: float = 60.0,
    bronze_table: str = "bronze",
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until no rows are lost (every landing file landed, repaired or escalated); return the seconds it took.

    Fails after the timeout naming the files still unaccounted for.
    """

    def look() -> Check:
        found = _landing.account(landing_path, lake_root, bronze_table)
        return Check(found.rows_lost == 0, found.summary())

    return seconds_until(look, f"no rows lost from {landing_path}", timeout, since, interval, configuration)


def _ids(table: Any, id_columns: list[str]) -> list[str]:
    parts = [[str(v) for v in table.column(c).to_pylist()] for c in id_columns]
    return ["\x1f".join(values) for values in zip(*parts, strict=True)]


def _bronze_id_counts(lake_root: str, bronze_table: str, id_columns: list[str]) -> Counter[str]:
    """How often each row id is in bronze, read from the Delta snapshot's own files."""
    path = Path(lake_root) / bronze_table
    if not (path / "_delta_log").is_dir():
        return Counter()
    files = [uri.removeprefix("file://") for uri in DeltaTable(str(path)).file_uris()]
    if not files:
        return Counter()
    return Counter(_ids(ds.dataset(files, format="parquet").to_table(columns=id_columns), id_columns))


def _fault_files(configuration: Configuration | None) -> list[Path]:
    """The regular files this run's fault actions landed (from the fault ledger)."""
    paths = [
        Path(p) for e in ledger.current_run(configuration) if e.event == "fault" for p in e.detail.get("paths", [])
    ]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def seconds_until_fault_rows_landed_once(
    lake_root: str,
    id_columns: list[str],
    timeout: float = 60.0,
    bronze_table: str = "bronze",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until every row of the files the fault landed is in bronze exactly once, by its ids; return seconds.

    Put it after a probe that waits for the pipeline to take the files (e.g.
    ``seconds_until_pipeline_caught_up``): rows re-sent from an earlier batch are in
    bronze once before the pipeline has looked at them. Before any fault it returns 0.
    Counts with ``deltalake`` and pyarrow, not the pipeline's code: a row re-sent or read
    twice (twice in bronze) or never landed (not at all) keeps it waiting; fails after the
    timeout with both counts, and at once when one of the files was quarantined since the
    fault (e.g. taken half written: what the pipeline refused is not a landing).
    """
    fault_at = ledger.last_event(configuration, "fault")
    if fault_at is None:
        return 0.0  # the steady state before the method: no fault, no rows of its to count
    files = _fault_files(configuration)
    if not files:
        raise ActivityFailed("the fault recorded no landed file to count the rows of")

    since = datetime.fromtimestamp(fault_at, UTC)
    names = {f.name for f in files}

    def look() -> Check:
        quarantined = Lake(lake_root).quarantined()
        refused = [r.source for r in quarantined if r.quarantined_at >= since and Path(r.source).name in names]
        if refused:
            return Check(False, f"quarantined since the fault: {', '.join(refused)} (taken unfinished?)", fatal=True)
        wanted = [
            i
            for f in files
            for i in _ids(pacsv.read_csv(str(f)) if f.suffix == ".csv" else pq.read_table(f), id_columns)
        ]
        counts = _bronze_id_counts(lake_root, bronze_table, id_columns)
        twice = sum(1 for i in wanted if counts[i] > 1)
        missing = sum(1 for i in wanted if counts[i] == 0)
        detail = f"{len(wanted)} rows in {len(files)} file(s): {twice} in bronze more than once, {missing} not at all"
        return Check(twice == 0 and missing == 0, detail)

    return seconds_until(
        look, "every row of the fault's files in bronze exactly once", timeout, "fault", interval, configuration
    )


def _bronze_values(lake_root: str, bronze_table: str, id_columns: list[str], column: str) -> dict[str, list[Any]]:
    """Row id -> every value of ``column`` bronze holds for it, read from the Delta snapshot's own files."""
    path = Path(lake_root) / bronze_table
    if not (path / "_delta_log").is_dir():
        return {}
    files = [uri.removeprefix("file://") for uri in DeltaTable(str(path)).file_uris()]
    if not files:
        return {}
    table = ds.dataset(files, format="parquet").to_table(columns=[*id_columns, column])
    values: dict[str, list[Any]] = {}
    for row_id, value in zip(_ids(table, id_columns), table.column(column).to_pylist(), strict=True):
        values.setdefault(row_id, []).append(value)
    return values


def _same(landed: Any, sent: Any) -> bool:
    return bool(
        landed == sent or (isinstance(landed, float) and isinstance(sent, float) and isnan(landed) and isnan(sent))
    )


def seconds_until_renamed_rows_landed(
    lake_root: str,
    id_columns: list[str],
    timeout: float = 60.0,
    bronze_table: str = "bronze",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until every row of the batches ``land_renamed_batch`` landed is in bronze exactly once, by its ids,
    holding the value it was sent with under the column's known name; return the seconds from the fault.

    Counts with ``deltalake`` and pyarrow, not the pipeline's code. A row missing, landed
    twice, or holding another value than it was sent with (imputed, not mapped) keeps it
    waiting; fails after the timeout with the counts. Before any fault it returns 0.
    """
    if ledger.last_event(configuration, "fault") is None:
        return 0.0
    faults = [e.detail for e in ledger.current_run(configuration) if e.fault == "land_renamed_batch"]
    if not faults:
        raise ActivityFailed("no land_renamed_batch fault recorded in this run")

    def look() -> Check:
        sent = total = twice = missing = changed = 0
        for detail in faults:
            path = Path(detail["paths"][0])  # the rollbacks set it aside only after the verdict
            table = pacsv.read_csv(str(path)) if path.suffix == ".csv" else pq.read_table(path)
            landed = _bronze_values(lake_root, bronze_table, id_columns, detail["column"])
            sent_values = table.column(detail["renamed_to"]).to_pylist()
            for row_id, value in zip(_ids(table, id_columns), sent_values, strict=True):
                found = landed.get(row_id, [])
                total, twice, missing = total + 1, twice + (len(found) > 1), missing + (not found)
                changed += len(found) == 1 and not _same(found[0], value)
            sent += 1
        seen = (
            f"{total} rows in {sent} renamed batch(es): {missing} not in bronze, {twice} more than once, "
            f"{changed} with another value than sent"
        )
        return Check(total > 0 and twice == missing == changed == 0, seen)

    return seconds_until(
        look, "every renamed row in bronze once, with its sent value", timeout, "fault", interval, configuration
    )
