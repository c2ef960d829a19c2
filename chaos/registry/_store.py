"""The MLflow tracking store as the chaos extension sees it: where it lives, whether it answers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from serving import processes
from serving.registry import ModelRegistry

LOCKER_MODULE = "chaos.registry._lock"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other scheme)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    path = tracking_uri.removeprefix("sqlite:").lstrip("/")
    # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path
    absolute = tracking_uri.removeprefix("sqlite:").startswith("////")
    return Path(("/" if absolute else "") + path)


def answers(tracking_uri: str, timeout: float = 1.0) -> tuple[bool, str]:
    """Whether the store answers a read within ``timeout`` seconds, and what was seen."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
            try:
                connection.execute("SELECT count(*) FROM registered_models").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            return False, f"{db}: {exc}"
        return True, f"{db} answers"
    if tracking_uri.startswith(("http://", "https://")):
        try:
            response = httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
        except httpx.HTTPError as exc:
            return False, f"{tracking_uri}: {type(exc).__name__}: {exc}"
        return response.status_code == 200, f"{tracking_uri}/health: {response.status_code}"
    raise ValueError(f"cannot probe tracking URI {tracking_uri!r}: only sqlite:/// and http(s):// are supported")


def lockers(db: Path) -> list[int]:
    """Pids of lock holders started by ``make_tracking_store_unreachable`` for this database."""
    return processes.find([LOCKER_MODULE, str(db)])


def registry(tracking_uri: str, model_name: str) -> ModelRegistry:
    """The registry client (``serving.registry``: one retry rule, outages as ``RegistryUnavailable``) for one model."""
    return ModelRegistry(model_name, tracking_uri=tracking_uri)
