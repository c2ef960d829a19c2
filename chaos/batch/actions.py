"""Batch scoring faults: the predictions table unwritable for a bounded outage while ``selfheal score`` runs.

Running as root, a permission change stops no write, so the outage is structural: the
table's folder is moved aside (``.<table>.outage``) and a plain file takes its name, so
delta-rs can neither read nor create a table there (``NotADirectoryError`` from the
object store), as a volume gone read-only or a mount point left empty would. The
scoring run started during the outage dead-letters the rows of every chunk whose write
fails (``kind = write``); after ``outage_seconds`` the folder comes back. The outage
ending is **not** the repair: the rows stay in the dead-letter queue until something
replays them (the healer's ``replay_dlq``, or ``selfheal dlq replay``).

The input is a new file in ``input_dir``: the newest landing batch's rows written again
with the injection time in its parquet metadata, so its content (batch scoring's input
version) was never scored before. The ledger's fault entry names it for the probes.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import _landing, ledger
from chaos.batch import _rows
from chaos.serving._server import resolve_command

__all__ = ["restore_output_table", "score_during_output_outage"]

logger = logging.getLogger(__name__)

FAULT = "output_table_unwritable"
_OUTAGE_MARK = "selfheal chaos: this table's folder is away for an outage (chaos.batch.actions)\n"


def _aside(lake_root: str, table: str) -> Path:
    return Path(lake_root) / f".{table}.outage"


def _break(lake_root: str, table: str) -> bool:
    """Move the table's folder aside and put a file in its place; whether there was a folder."""
    path, aside = Path(lake_root) / table, _aside(lake_root, table)
    if aside.exists():
        raise ActivityFailed(f"{aside} exists: an earlier outage was not undone (run restore_output_table)")
    existed = path.is_dir()
    if existed:
        os.replace(path, aside)
    path.write_text(_OUTAGE_MARK)
    return existed


def _restore(lake_root: str, table: str) -> str:
    """Undo ``_break``: the file removed, the folder back. What was done, in words."""
    path, aside = Path(lake_root) / table, _aside(lake_root, table)
    done = []
    if path.is_file() and path.read_text() == _OUTAGE_MARK:
        path.unlink()
        done.append("outage file removed")
    if aside.is_dir():
        if path.exists():
            raise ActivityFailed(f"cannot put {table} back: {path} exists (a writer created it during the outage?)")
        os.replace(aside, path)
        done.append("folder put back")
    return ", ".join(done) or "nothing to undo"


def _new_input(landing_path: str, input_dir: str, at: float) -> tuple[Path, int]:
    """The newest landing batch's rows in a new parquet file (its content new: the time in its metadata)."""
    batches = [p for p in _landing.batch_files(landing_path) if p.suffix in (".parquet", ".pq")]
    if not batches:
        raise ActivityFailed(f"no parquet batch in {landing_path} to score")
    table = pq.read_table(batches[-1])
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"selfheal.chaos.at": repr(at).encode()})
    folder = Path(input_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scored-{int(at * 1000)}.parquet"
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path, table.num_rows


def score_during_output_outage(
    lake_root: str,
    landing_path: str,
    input_dir: str,
    command: list[str],
    cwd: str = ".",
    table: str = "predictions",
    outage_seconds: float = 10.0,
    log_file: str | None = None,
    timeout: float = 180.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Make the predictions table unwritable, run ``selfheal score`` on a new batch file, end the outage.

    ``command`` is the ``selfheal`` invocation (e.g. ``[selfheal, -c, <config>]``); the
    action adds ``score --input <file> --output <table>`` and waits for it. The outage
    lasts ``outage_seconds`` from the injection, or until the scoring run ends if that is
    later. Fails (after ending the outage) when the run put no row of the file in the
    dead-letter queue as a delivery failure: the fault did not hit. Returns the file, its
    rows, the rows dead-lettered, and when the outage began and ended.
    """
    at = time.time()
    source, rows = _new_input(landing_path, input_dir, at)
    version = _rows.sha256(source)
    existed = _break(lake_root, table)
    detail = {"table": table, "input": str(source), "input_version": version, "rows": rows}
    at = ledger.record(configuration, "fault", fault=FAULT, detail=detail)
    try:
        argv = [*resolve_command(command), "score", "--input", str(source), "--output", table]
        out: Any = subprocess.DEVNULL
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            out = open(log_file, "ab")  # noqa: SIM115 - closed below
        try:
            code = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise ActivityFailed(f"`selfheal score` did not finish within {timeout:g}s") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        scored = time.time() - at
        time.sleep(max(0.0, at + outage_seconds - time.time()))
    finally:
        undone = _restore(lake_root, table)
        ended = ledger.record(configuration, "restore", fault=FAULT, detail={"table": table, "undone": undone})
    found = _rows.count(lake_root, table, version, rows)
    logger.info("scored %s during the outage (exit %d): %s", source.name, code, found.summary())
    if found.delivery_waiting == 0:
        raise ActivityFailed(
            f"the outage of {table} dead-lettered no row of {source.name} (exit {code}): {found.summary()}"
        )
    return {
        "input": str(source),
        "rows": rows,
        "exit_code": code,
        "dead_lettered": found.delivery_waiting,
        "table_existed": existed,
        "scored_seconds": round(scored, 2),
        "outage_seconds": round(ended - at, 2),
    }


def restore_output_table(
    lake_root: str, table: str = "predictions", configuration: Configuration | None = None
) -> dict[str, Any]:
    """Undo the outage if it is still in place: the file in the table's place removed, its folder put back.

    The rows the outage dead-lettered stay in the queue: replaying them is the repair, not this.
    """
    undone = _restore(lake_root, table)
    if undone != "nothing to undo":
        ledger.record(configuration, "restore", fault=FAULT, detail={"table": table, "undone": undone})
    return {"table": table, "undone": undone}
