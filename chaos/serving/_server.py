"""Finding the model server's processes and talking to it over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed

from checkpoints.exceptions import ServingUnavailable
from serving import processes
from serving.client import ServingClient

#: Words one of which the master's command line holds (``python -m serving``, gunicorn's title).
_SERVER_MARKERS = ("serving", "gunicorn", "selfheal")


@dataclass(frozen=True)
class ServerProcesses:
    """The server's processes: its top one (a gunicorn master, or the supervisor of several), masters, workers."""

    master: int
    masters: tuple[int, ...]
    workers: tuple[int, ...]


def _looks_like_server(pid: int) -> bool:
    line = " ".join(processes.argv(pid))
    return any(marker in line for marker in _SERVER_MARKERS)


def worker_answering(url: str, timeout: float = 5.0) -> int:
    """The pid of the worker that answers ``GET /health`` at ``url``."""
    try:
        with ServingClient(url) as server:
            pid = server.health(timeout).get("pid")
    except ServingUnavailable as exc:
        raise ActivityFailed(f"model server at {url} does not answer GET /health: {exc}") from exc
    if not isinstance(pid, int):
        raise ActivityFailed(f"model server at {url}: GET /health did not report a worker pid")
    return pid


def find_server(url: str, pid_file: str | None = None) -> ServerProcesses:
    """The server behind ``url``: the process in ``pid_file`` if alive, else found from a worker's parents.

    Under ``--replicas`` the top process is the supervisor and its children are the
    masters; ``workers`` are then every master's workers.

    Raises:
        ActivityFailed: nothing answers, or the process found is not a model server.
    """
    top = processes.read_pid_file(pid_file) if pid_file else None
    if top is None:
        worker = worker_answering(url)
        top = processes.parent(worker)
        if top is None or top <= 1:
            raise ActivityFailed(f"worker {worker} of {url} has no live master (parent {top})")
        above = processes.parent(top)
        if above is not None and processes.name(above) == processes.SUPERVISOR:
            top = above
    if not _looks_like_server(top):
        raise ActivityFailed(f"process {top} ({' '.join(processes.argv(top))[:120]!r}) is not a model server")
    masters = tuple(processes.replica_masters(top)) if processes.name(top) == processes.SUPERVISOR else (top,)
    return ServerProcesses(top, masters, tuple(w for m in masters for w in processes.children(m)))


def ready(url: str, timeout: float) -> tuple[bool, str]:
    """Whether ``GET /ready`` answers 200, and what was seen."""
    try:
        with ServingClient(url) as server:
            body = server.ready(timeout)
    except ServingUnavailable as exc:
        return False, str(exc)
    return True, f"ready, model version {body.get('model_version')}"


def predict(url: str, body: Any, timeout: float) -> tuple[bool, str, dict[str, Any] | None]:
    """POST ``body`` to ``/predict``: (answered with predictions, what was seen, the answer)."""
    try:
        response = httpx.post(f"{url.rstrip('/')}/predict", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"POST /predict: {type(exc).__name__}: {exc}", None
    if response.status_code != 200:
        return False, f"POST /predict: {response.status_code} {response.text[:200]}", None
    answer = response.json()
    if not answer.get("predictions"):
        return False, "POST /predict: 200 without predictions", answer
    return True, f"200 from {answer.get('served_by')} v{answer.get('model_version')}", answer


def load_payload(path: str) -> Any:
    """A JSON request body (one record or a list) from a file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ActivityFailed(f"cannot read the request body {path}: {exc}") from exc


def resolve_command(command: Sequence[str]) -> list[str]:
    """``command`` with its program found on PATH or next to this Python (the venv's ``bin``)."""
    if not command:
        raise ValueError("command must not be empty")
    program = command[0]
    if os.sep not in program and shutil.which(program) is None:
        candidate = Path(sys.executable).parent / program
        if candidate.exists():
            program = str(candidate)
    return [program, *command[1:]]


def run_command(command: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command`` (found as ``resolve_command`` finds it) to its end; its stdout, or ActivityFailed."""
    argv = resolve_command(command)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ActivityFailed(f"{' '.join(command)}: {exc}") from exc
    if done.returncode != 0:
        raise ActivityFailed(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def start_detached(
    command: Sequence[str], cwd: str, log_file: str | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, so it outlives the experiment that started it."""
    argv = resolve_command(command)
    out: Any = subprocess.DEVNULL
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env if env is not None else dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise ActivityFailed(f"cannot start {argv}: {exc}") from exc
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def wait_http_ok(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> float:
    """Seconds until ``GET url`` answers 200; ActivityFailed if ``proc`` exits or time runs out."""
    started = time.monotonic()
    seen = ""

    def answered() -> bool:
        nonlocal seen
        if proc is not None and proc.poll() is not None:
            raise ActivityFailed(f"process {proc.args!r} exited with {proc.returncode} before {url} answered 200")
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.HTTPError as exc:
            seen = f"{type(exc).__name__}: {exc}"
            return False
        seen = f"{response.status_code} {response.text[:200]}"
        return response.status_code == 200

    try:
        processes.wait_until(answered, timeout, url, interval=0.3)
    except TimeoutError:
        raise ActivityFailed(f"{url} did not answer 200 within {timeout:g}s: {seen}") from None
    return time.monotonic() - started


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> float:
    """Seconds until the server's ``/ready`` answers 200; ActivityFailed if ``proc`` exits or time runs out."""
    started = time.monotonic()
    alive = (lambda: proc.poll() is None) if proc is not None else None
    try:
        with ServingClient(url) as server:
            server.wait_ready(timeout, interval=0.3, alive=alive)
    except ServingUnavailable as exc:
        raise ActivityFailed(str(exc)) from exc
    return time.monotonic() - started
