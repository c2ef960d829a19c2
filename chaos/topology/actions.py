"""Faults of the production topology (``selfheal up --profile production``), and their undo.

Each reads what ``selfheal up`` recorded in its run folder (``stack_run``: the
``<service>.pid`` files and ``production.json``), so it acts on the real servers:

- PostgreSQL (the Prefect server's and the MLflow server's databases) stopped with
  ``pg_ctl stop -m fast`` (every connection cut) and started again with ``pg_ctl restart``
  on the options it last ran with (``postmaster.opts``);
- the S3 store (the lake, MLflow's artifacts) stopped (its whole process tree: every
  request is refused) and started again with the same command line on the same data,
  its pid file rewritten so ``selfheal down`` still stops it;
- one of the two Prefect process workers killed (SIGKILL, with the flow run it runs)
  once that run has sent its first heartbeat.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.topology import _stack
from serving import processes

__all__ = [
    "kill_worker_of_running_run",
    "restart_killed_worker",
    "start_object_store",
    "start_postgres",
    "stop_object_store",
    "stop_postgres",
]

logger = logging.getLogger(__name__)

WORKERS = ("prefect-worker-1", "prefect-worker-2")


def _pg_ctl(data: Path, *args: str) -> str:
    """Run the data folder's own major version of ``pg_ctl`` (as ``postgres`` when root, as the stack runs it)."""
    try:
        version = (data / "PG_VERSION").read_text().strip()
    except OSError as exc:
        raise ActivityFailed(f"{data} is not a PostgreSQL data folder: {exc}") from None
    binary = Path(f"/usr/lib/postgresql/{version}/bin/pg_ctl")
    runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    command = [*runner, str(binary), "-D", str(data), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/", timeout=120)
    if done.returncode:
        raise ActivityFailed(f"pg_ctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return done.stdout


def stop_postgres(stack_run: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Stop the stack's PostgreSQL server (``pg_ctl stop -m fast``: open connections are cut); undo: start_postgres."""
    data = Path(_stack.production(stack_run)["postgres_data"])
    began = time.time()  # the outage starts with the stop, not when pg_ctl has waited it out
    _pg_ctl(data, "-m", "fast", "-w", "stop")
    at = ledger.record(configuration, "fault", fault="stop_postgres", detail={"data": str(data)}, at=began)
    logger.info("PostgreSQL at %s stopped", data)
    return {"data": str(data), "at": at}


def start_postgres(stack_run: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Start the stack's PostgreSQL server again on the options it last ran with (nothing when it runs)."""
    data = Path(_stack.production(stack_run)["postgres_data"])
    if (data / "postmaster.pid").exists():
        return {"data": str(data), "running": True}
    # restart reads postmaster.opts (port, socket folder, listen address) even when the server is down.
    _pg_ctl(data, "-l", str(data.parent / "postgres.log"), "-w", "restart")
    _stack.record_pid(stack_run, "postgres", int((data / "postmaster.pid").read_text().split()[0]))
    at = ledger.record(configuration, "restore", fault="stop_postgres", detail={"data": str(data)})
    logger.info("PostgreSQL at %s started again", data)
    return {"data": str(data), "running": False, "at": at}


def stop_object_store(stack_run: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Stop the stack's S3 store (every process of it): each request to it is refused. Undo: start_object_store."""
    endpoint = _stack.endpoint(stack_run)
    pid = _stack.pid(stack_run, "object-store")
    command = _stack.command_of(pid)
    stopped = processes.process_tree(pid)
    began = time.time()  # the store refuses requests from the SIGTERM on, before its processes are gone
    if processes.stop(stopped, grace=10.0) or _stack.store_answers(endpoint):
        raise ActivityFailed(f"{endpoint} still answers after its store was stopped")
    # Only once it is down: a rollback must not start a second store beside a survivor.
    _stack.save_command(stack_run, "object-store", command)
    detail = {"pid": pid, "endpoint": endpoint}
    at = ledger.record(configuration, "fault", fault="stop_object_store", detail=detail, at=began)
    logger.info("object store %s stopped (%d processes)", endpoint, len(stopped))
    return {"endpoint": endpoint, "stopped": stopped, "at": at}


def start_object_store(
    stack_run: str, timeout: float = 120.0, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Start the stopped S3 store again (same command line, same data) and wait until it answers."""
    pid = _stack.start_saved(stack_run, "object-store")  # its log: object-store.log in the run folder
    if pid is None:
        return {"running": True}
    endpoint = _stack.endpoint(stack_run)
    try:
        processes.wait_until(lambda: _stack.store_answers(endpoint), timeout, f"the object store at {endpoint}", 0.2)
    except TimeoutError as exc:
        raise ActivityFailed(str(exc)) from None
    at = ledger.record(configuration, "restore", fault="stop_object_store", detail={"pid": pid})
    logger.info("object store %s started again (pid %d)", endpoint, pid)
    return {"endpoint": endpoint, "pid": pid, "at": at}


def _running_runs(prefect_api_url: str, flow_name: str) -> list[dict[str, Any]]:
    body = {
        "flows": {"name": {"any_": [flow_name]}},
        "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}},
    }
    answer = httpx.post(f"{prefect_api_url.rstrip('/')}/flow_runs/filter", json=body, timeout=10.0)
    answer.raise_for_status()
    return [r for r in answer.json() if r.get("infrastructure_pid")]


def _heartbeats(prefect_api_url: str, run_id: str) -> int:
    """How many heartbeat events of the flow run the Prefect server has received (what its automation waits on)."""
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        },
        "limit": 1,
    }
    answer = httpx.post(f"{prefect_api_url.rstrip('/')}/events/filter", json=body, timeout=10.0)
    answer.raise_for_status()
    return int(answer.json().get("total", 0))


def kill_worker_of_running_run(
    stack_run: str,
    prefect_api_url: str,
    flow_name: str = "selfheal-pipeline",
    timeout: float = 180.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """SIGKILL the worker of a running ``flow_name`` run, and the run, once the server has the run's first heartbeat.

    The other worker is left alone; Prefect marks the dead run Crashed once it misses its
    heartbeats (the stack's automation, armed by the first one), which frees the
    deployment's concurrency slot. Undo: restart_killed_worker.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in _running_runs(prefect_api_url, flow_name):
            if not _heartbeats(prefect_api_url, str(run["id"])):
                continue
            infra = int(run["infrastructure_pid"])
            for worker in WORKERS:
                pid = _stack.pid(stack_run, worker)
                tree = processes.process_tree(pid)
                if infra not in tree:
                    continue
                command = _stack.command_of(pid)
                began = time.time()
                if processes.kill(tree):
                    raise ActivityFailed(f"{worker}'s processes {tree} outlived SIGKILL")
                _stack.save_command(stack_run, worker, command)
                detail = {"worker": worker, "flow_run": run["id"], "pids": tree}
                at = ledger.record(configuration, "fault", fault="kill_worker_of_running_run", detail=detail, at=began)
                logger.info("killed %s (pids %s) under flow run %s", worker, tree, run["id"])
                return {"worker": worker, "flow_run": str(run["id"]), "killed": tree, "at": at}
        time.sleep(0.25)
    raise ActivityFailed(f"no {flow_name} run with a heartbeat on a worker of {stack_run} within {timeout:g}s")


def restart_killed_worker(stack_run: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Start the worker kill_worker_of_running_run killed again, as it ran (nothing when none was killed)."""
    started: dict[str, int] = {}
    for worker in WORKERS:
        pid = _stack.start_saved(stack_run, worker)
        if pid is not None:
            started[worker] = pid
            logger.info("%s started again (pid %d)", worker, pid)
    return {"started": started}
