"""What ``selfheal up --profile production`` recorded in its run folder, read by the topology activities."""

import json
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
    """The pid in a service's pid file (``object-store``, ``prefect-worker-1``, ...)."""
    path = Path(stack_run) / f"{service}.pid"
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ActivityFailed(f"no pid file for {service} at {path}: {exc}") from None


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
