"""What ``selfheal up --profile production`` recorded in its run folder, read by the topology activities."""

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil
from chaoslib.exceptions import ActivityFailed


def production(stack_run: str) -> dict[str, Any]:
    """``production.json``: the stores' environment, PostgreSQL's data folder, the databases."""
    path = Path(stack_run) / "production.json"
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ActivityFailed(f"no production stack at {path} (selfheal up --profile production): {exc}") from None
    return loaded


def pid(stack_run: str, service: str) -> int:
    """The pid of a running service (``object-store``, ``prefect-worker-1``, ...) from its pid file.

    The file's start time must match the process's (as ``selfheal down`` checks): a pid the
    system gave to another process since is not the service.
    """
    path = Path(stack_run) / f"{service}.pid"
    try:
        record = json.loads(path.read_text())
        found, started_at = int(record["pid"]), float(record["started_at"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ActivityFailed(f"no pid file for {service} at {path}: {exc}") from None
    try:
        if abs(psutil.Process(found).create_time() - started_at) < 1.0:
            return found
    except psutil.Error:
        pass
    raise ActivityFailed(f"{service} (pid {found} in {path}) is not running")


def command_of(pid: int) -> dict[str, Any]:
    """What starts the process again as it runs: its command line, folder and environment."""
    try:
        proc = psutil.Process(pid)
        return {"argv": proc.cmdline(), "cwd": proc.cwd(), "env": proc.environ()}
    except psutil.Error as exc:
        raise ActivityFailed(f"pid {pid} is not running: {exc}") from None


def start_again(stack_run: str, service: str, command: dict[str, Any], log: Path) -> int:
    """Start ``command`` (from ``command_of``) in a session of its own, output appended to ``log``; its pid recorded."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command["argv"],
            cwd=command["cwd"],
            env=command["env"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record_pid(stack_run, service, proc.pid)
    return proc.pid


def endpoint(stack_run: str) -> str:
    """The S3 store's endpoint URL."""
    return str(production(stack_run)["environment"]["MLFLOW_S3_ENDPOINT_URL"])


def store_answers(endpoint: str) -> bool:
    """Whether the S3 gateway answers HTTP at all."""
    try:
        httpx.get(endpoint, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True  # any HTTP answer (403 for an anonymous GET) is the gateway up


def record_pid(stack_run: str, service: str, pid: int) -> None:
    """Rewrite a service's pid file for a process started again, as ``selfheal up`` writes it: ``selfheal down``
    stops the new one (it checks the start time, so the old pid would be skipped as reused)."""
    proc = psutil.Process(pid)
    record = {"name": service, "pid": pid, "started_at": proc.create_time(), "argv": proc.cmdline()}
    path = Path(stack_run) / f"{service}.pid"
    path.with_suffix(".tmp").write_text(json.dumps(record))
    path.with_suffix(".tmp").replace(path)


def _saved(stack_run: str, service: str) -> Path:
    return Path(stack_run) / f"{service}.stopped.json"


def save_command(stack_run: str, service: str, command: dict[str, Any]) -> None:
    """Keep a stopped service's command (from ``command_of``) for ``start_saved``."""
    _saved(stack_run, service).write_text(json.dumps(command))


def start_saved(stack_run: str, service: str, log: Path | None = None) -> int | None:
    """Start a service ``save_command`` kept (its log: ``log``, else ``<service>.log`` here); None when none was."""
    saved = _saved(stack_run, service)
    if not saved.exists():
        return None
    command = json.loads(saved.read_text())
    pid = start_again(stack_run, service, command, log or Path(stack_run) / f"{service}.log")
    saved.unlink()
    return pid
