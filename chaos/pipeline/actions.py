"""Pipeline faults: a run killed mid-stage (SIGKILL), as a lost worker or an OOM kill would;
a stage table's commit torn, as a writer that crashed on a store without atomic puts (or a
damaged disk) leaves it.

The action starts the pipeline command itself or finds a run already going (one the
schedule started), watches the lake to see where the run is (a stage's output table
gets a new version when the stage before it finished), and kills the run and every
process it started while the chosen stage runs. Prefect never
retries a Crashed run: recovery is the next run finishing the work without losing
or doubling rows.

Stages, by what marks their start:

- ``features``: bronze got a new version (validate-and-land finished);
- ``train``: silver got a new version (features finished), plus ``delay`` seconds;
- ``any``: ``delay`` seconds after the command started.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import _landing, ledger
from chaos.serving._server import start_detached
from checkpoints import Lake
from checkpoints.exceptions import CheckpointError, CheckpointNotFound
from serving import processes

__all__ = ["kill_pipeline_run", "run_pipeline_if_behind", "set_aside_torn_commit", "tear_newest_commit"]

logger = logging.getLogger(__name__)

_MARKERS = {"features": "bronze", "train": "silver"}


def _version(lake_root: str, table: str) -> int | None:

    lake = Lake(lake_root)
    try:
        return lake.version(table) if lake.exists(table) else None
    except CheckpointError:
        return None


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and its descendants (the master first, so nothing is re-spawned)."""
    pids = [pid, *processes.descendants(pid)]
    left = processes.kill(pids, timeout=10.0)
    if left:
        raise ActivityFailed(f"processes {left} of the pipeline run still alive after SIGKILL")
    return pids


def kill_pipeline_run(
    lake_root: str,
    stage: str = "train",
    delay: float = 1.0,
    match: list[str] | None = None,
    command: list[str] | None = None,
    cwd: str = ".",
    log_file: str | None = None,
    timeout: float = 300.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """SIGKILL a pipeline run and everything it started while the given stage runs.

    The run is either started here with ``command``, or whichever run is in the stage:
    every process whose arguments include every word of ``match`` (e.g. ``[pipeline,
    run, <config path>]``, a run the schedule started) alive when the stage starts; a run
    that ends without reaching the stage is let be, and the next one is watched. ``stage``:
    ``features`` (right after bronze is written), ``train`` (``delay`` seconds after
    silver is written) or ``any`` (``delay`` seconds after a run is seen). Fails when no
    run reaches the stage within the timeout (or the started one ends first). Returns
    the pids killed and the seconds from the action's start to the kill.
    """
    if stage not in (*_MARKERS, "any"):
        raise ValueError(f"stage must be one of {', '.join([*_MARKERS, 'any'])}, got {stage!r}")
    if (command is None) == (match is None):
        raise ValueError("give exactly one of command (start a run) or match (find a running one)")
    marker = _MARKERS.get(stage)
    started = time.monotonic()
    before = _version(lake_root, marker) if marker else None
    proc = start_detached(command, cwd, log_file) if command else None
    reached_at: float | None = None
    while True:
        now = time.monotonic()
        if proc is not None:
            runs = [proc.pid] if proc.poll() is None else []
            if not runs:
                raise ActivityFailed(f"the pipeline run ended after {now - started:.1f}s before reaching {stage!r}")
        else:
            runs = processes.find(match or [])
        if now - started > timeout:
            if proc is not None:
                _kill_tree(proc.pid)
            raise ActivityFailed(f"no pipeline run reached {stage!r} within {timeout:g}s")
        if reached_at is None and (_version(lake_root, marker) != before if marker else bool(runs)):
            reached_at = now
        if reached_at is not None and now - reached_at >= (0.0 if stage == "features" else delay):
            if runs:
                break
            # The run that reached the stage finished (or died) before the kill: wait for the next one.
            reached_at, before = None, _version(lake_root, marker) if marker else None
        time.sleep(0.05)
    lived = time.monotonic() - started
    pids = [member for pid in runs for member in _kill_tree(pid)]
    if proc is not None:
        proc.wait(10)
    at = ledger.record(configuration, "fault", fault="kill_pipeline_run", detail={"stage": stage, "pids": pids})
    logger.info("killed pipeline run(s) %s in stage %s, %.1fs after the action started", runs, stage, lived)
    return {"stage": stage, "pids": pids, "lived_seconds": round(lived, 2), "at": at}


def run_pipeline_if_behind(
    landing_path: str,
    lake_root: str,
    command: list[str],
    match: list[str] | None = None,
    cwd: str = ".",
    log_file: str | None = None,
    timeout: float = 600.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Run the pipeline command once, and wait for it, if the pipeline has work left.

    Work left: a landing file in neither bronze nor quarantine, or bronze ahead of the
    last complete run manifest (a killed run). The rollback of ``kill_pipeline_run``
    when nothing else (a schedule, the healer) finished the work; given ``match`` (the
    words of a run's command line), a run already going is waited for first. Returns
    whether it ran, why, its exit code and what is left unaccounted.
    """
    if match:  # a run is already going (the schedule's): let it finish rather than race it
        going = processes.find(match)
        if processes.wait_gone(going, timeout):
            raise ActivityFailed(f"the pipeline runs {going} did not finish within {timeout:g}s")
    reason = _landing.unfinished(landing_path, lake_root)
    if reason is None:
        return {"ran": False, "detail": _landing.account(landing_path, lake_root).summary()}
    proc = start_detached(command, cwd, log_file)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        raise ActivityFailed(f"the pipeline run did not finish within {timeout:g}s (killed it)") from None
    after = _landing.account(landing_path, lake_root)
    ledger.record(configuration, "restore", fault="run_pipeline_if_behind", detail={"exit_code": code})
    return {"ran": True, "reason": reason, "exit_code": code, "detail": after.summary()}


def _write_new(path: Path, raw: bytes) -> bool:
    """Create ``path`` with ``raw`` unless it exists (a writer committed that version first)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    return True


def tear_newest_commit(
    lake_root: str, table: str = "silver", configuration: Configuration | None = None
) -> dict[str, Any]:
    """Leave a torn commit on ``table``: the next log entry holds half of the newest entry's first line.

    That is what a writer that crashed mid-put leaves on a store without atomic puts:
    the table no longer opens (every reader and every pipeline run fails on it) until
    the torn entry is set aside. Nothing undoes it but a repair (or the rollback).
    """
    lake = Lake(lake_root)
    if not lake.exists(table):
        raise ActivityFailed(f"no table {table!r} under {lake_root} to tear")
    log = Path(lake_root) / table / "_delta_log"
    for _ in range(50):  # a pipeline run may commit the same version first: take the next one
        newest = lake.version(table)
        first_line = (log / f"{newest:020d}.json").read_bytes().split(b"\n", 1)[0]
        torn = newest + 1
        if _write_new(log / f"{torn:020d}.json", first_line[: len(first_line) // 2]):
            break
    else:
        raise ActivityFailed(f"could not add a torn entry to {table!r}: its log kept moving")
    at = ledger.record(configuration, "fault", fault="tear_newest_commit", detail={"table": table, "version": torn})
    logger.info("table %s: log entry %d torn (the table read at version %d before)", table, torn, newest)
    return {"table": table, "torn_version": torn, "last_good_version": newest, "at": at}


def set_aside_torn_commit(
    lake_root: str, table: str = "silver", configuration: Configuration | None = None
) -> dict[str, Any]:
    """Rollback of ``tear_newest_commit``: set the torn entry aside if nothing repaired it yet."""
    try:
        version = Lake(lake_root).recover(table)
    except CheckpointNotFound:
        return {"table": table, "recovered": False, "detail": "the table reads: nothing torn"}
    ledger.record(configuration, "restore", fault="set_aside_torn_commit", detail={"table": table})
    return {"table": table, "recovered": True, "version": version}
