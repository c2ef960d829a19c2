"""Serving faults: kill or hang one worker, kill the whole server; and the rollbacks that bring it back.

The server is found from its URL: ``GET /health`` names the worker that answered,
its parent is gunicorn's master (or give the master's ``pid_file``). Signals are
real; nothing is mocked.
"""

# No ``from __future__ import annotations`` in activity modules: Chaos Toolkit's
# discovery reads the annotations at run time and reports real types only then.

import logging
import os
import signal
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.serving import _server
from serving import processes

__all__ = ["hang_worker", "kill_replica", "kill_server", "kill_worker", "release_hung_worker", "start_server_if_down"]

logger = logging.getLogger(__name__)


def _signal_number(name: str) -> signal.Signals:
    """``"SIGKILL"`` or ``"KILL"`` -> ``signal.SIGKILL``."""
    key = name.upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    try:
        return signal.Signals[key]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def kill_worker(
    url: str,
    signal_name: str = "SIGKILL",
    pid_file: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Send a signal (default SIGKILL) to the worker that answers at the URL and wait until it is gone.

    The master should replace it while the other workers keep serving.
    Returns the killed pid, the master and the workers before the kill.
    """
    sig = _signal_number(signal_name)
    server = _server.find_server(url, pid_file)
    victim = _server.worker_answering(url)
    if victim not in server.workers:
        raise ActivityFailed(f"worker {victim} is not one of server {server.master}'s ({list(server.workers)})")
    processes.kill([victim], sig, timeout=0)
    at = ledger.record(configuration, "fault", fault="kill_worker", detail={"pid": victim, "signal": sig.name})
    left = processes.wait_gone([victim], timeout=10.0)
    if left:
        raise ActivityFailed(f"worker {victim} still alive 10s after {sig.name}")
    logger.info("killed worker %d of master %d with %s", victim, server.master, sig.name)
    return {
        "pid": victim,
        "master": server.master,
        "workers_before": list(server.workers),
        "signal": sig.name,
        "at": at,
    }


def hang_worker(
    url: str,
    pid_file: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """SIGSTOP the worker that answers at the URL: it stays alive but runs nothing, as a wedged process does.

    Unlike a dead worker, its master gets no SIGCHLD: only gunicorn's heartbeat timeout
    notices it. Requests on connections it already holds hang. Nothing here continues it;
    undo with ``release_hung_worker``. Returns the stopped pid and the master.
    """
    server = _server.find_server(url, pid_file)
    victim = _server.worker_answering(url)
    if victim not in server.workers:
        raise ActivityFailed(f"worker {victim} is not one of server {server.master}'s ({list(server.workers)})")
    started = processes.started_at(victim)
    processes.kill([victim], signal.SIGSTOP, timeout=0)
    at = ledger.record(
        configuration, "fault", fault="hang_worker", detail={"pid": victim, "started": started, "master": server.master}
    )
    try:
        processes.wait_until(lambda: processes.stopped(victim), 5.0, f"worker {victim} to stop", interval=0.02)
    except TimeoutError:
        raise ActivityFailed(f"worker {victim} is not stopped 5s after SIGSTOP") from None
    logger.info("stopped worker %d of master %d with SIGSTOP", victim, server.master)
    return {"pid": victim, "master": server.master, "workers_before": list(server.workers), "at": at}


def release_hung_worker(configuration: Configuration | None = None) -> dict[str, Any]:
    """Undo hang_worker: SIGKILL the worker it stopped if it is still there (its master replaces it).

    Killed rather than continued: a worker that wakes after its master gave up on it
    would answer with a stale heartbeat and be killed mid-request anyway. The pid is
    only signalled if it is still the process that was stopped (same start time).
    """
    fault = ledger.last_fault(configuration, "hang_worker")
    if fault is None:
        return {"released": False, "detail": "no worker was stopped in this run"}
    pid, started = int(fault["pid"]), fault.get("started")
    if not processes.alive(pid) or processes.started_at(pid) != started:
        return {"released": False, "pid": pid, "detail": "the stopped worker is gone already"}
    left = processes.kill([pid], signal.SIGKILL, timeout=10.0)  # SIGKILL reaches a stopped process
    ledger.record(configuration, "restore", fault="release_hung_worker", detail={"pid": pid, "left": left})
    if left:
        raise ActivityFailed(f"stopped worker {pid} still alive 10s after SIGKILL")
    return {"released": True, "pid": pid, "detail": "killed the worker still stopped"}


def kill_server(
    url: str,
    pid_file: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """SIGKILL the whole server (its supervisor, every master, every worker) at once, as a crashed host would.

    Nothing restarts it but the healer. Returns the pids killed.
    """
    server = _server.find_server(url, pid_file)
    return _kill_tree(server.master, "kill_server", configuration)


def kill_replica(
    url: str,
    pid_file: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """SIGKILL one of the servers on the port (a gunicorn master and its workers), as a crashed process would.

    The one whose worker answers ``/health``. Its supervisor (``serving.replicas`` >= 2)
    should start it again while the others keep answering. Returns the pids killed.
    """
    server = _server.find_server(url, pid_file)
    if len(server.masters) < 2:
        raise ActivityFailed(f"server {server.master} runs {len(server.masters)} master(s): nothing to kill one of")
    victim = processes.parent(_server.worker_answering(url))
    if victim not in server.masters:
        raise ActivityFailed(f"master {victim} is not one of server {server.master}'s ({list(server.masters)})")
    return _kill_tree(victim, "kill_replica", configuration)


def _kill_tree(top: int, fault: str, configuration: Configuration | None) -> dict[str, Any]:
    tree = [top, *processes.descendants(top)]
    # The top first, so it cannot fork replacements for the processes killed after it.
    processes.kill(tree, timeout=0)
    at = ledger.record(configuration, "fault", fault=fault, detail={"master": top, "pids": tree})
    left = processes.wait_gone(tree, timeout=10.0)
    if left:
        raise ActivityFailed(f"processes {left} of server {top} still alive 10s after SIGKILL")
    logger.info("%s: killed %d and its %d descendants", fault, top, len(tree) - 1)
    return {"master": top, "pids": tree, "at": at}


def start_server_if_down(
    url: str,
    command: list[str],
    cwd: str = ".",
    log_file: str | None = None,
    pid_file: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Start the server with the command unless the URL already answers /ready; wait until it does.

    The rollback of ``kill_server``: whatever the healer did, the experiment leaves a
    server running. The command runs in its own session (it outlives the experiment),
    with ``env`` added to this process's environment; its pid goes to ``pid_file``.
    Returns whether it started one and the pid.
    """
    ok, seen = _server.ready(url, timeout=3.0)
    if ok:
        return {"started": False, "detail": seen}
    proc = _server.start_detached(command, cwd, log_file, env={**os.environ, **(env or {})})
    if pid_file:
        Path(pid_file).parent.mkdir(parents=True, exist_ok=True)
        Path(pid_file).write_text(f"{proc.pid}\n")
    seconds = _server.wait_ready(url, proc, timeout)
    ledger.record(configuration, "restore", fault="start_server_if_down", detail={"pid": proc.pid})
    logger.info("started the server (pid %d), ready after %.1fs", proc.pid, seconds)
    return {"started": True, "pid": proc.pid, "seconds": seconds}
