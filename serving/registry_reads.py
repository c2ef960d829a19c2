"""Registry reads without MLflow: the few look-ups a server or a tick needs, in milliseconds.

Importing MLflow takes seconds (it is most of a cold start), and serving only
needs four reads: a version by alias, a version by number, the registered
model's tags, and where a version's artifacts live. Two readers answer them:

* ``SqliteReads``: read-only ``sqlite3`` queries on the tables MLflow's own
  SQL store writes (``registered_model_aliases``, ``model_versions``,
  ``model_version_tags``, ``registered_model_tags``), for the embedded
  ``sqlite:///...`` store. tests/serving/test_registry_reads.py pins them to
  what the installed MLflow writes.
* ``RestReads``: MLflow's REST API (``/api/2.0/mlflow/...``) with plain urllib,
  for an ``http(s)://`` tracking server (auth from ``MLFLOW_TRACKING_TOKEN`` or
  ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, as MLflow's client reads them).

Errors follow ``serving.registry``'s rule: "locked", a refused connection or a
5xx is ``TransientRead`` (an ``OSError``, so ``is_transient`` retries it); a
missing model, version or alias is None. Writes and any other URI use MLflow.

Example:
    >>> reads = light_reads("sqlite:////srv/mlflow/mlflow.db")
    >>> reads.alias("fraud-detector", "champion")       # a VersionRow, or None
"""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: MLflow's marker for a deleted version its SQL store keeps a row of.
_DELETED_STAGE = "Deleted_Internal"
#: MLflow's default workspace (MLflow 3.5+ scopes every registry row by workspace).
_WORKSPACE = "default"
#: REST error codes that mean "no such model, version or alias".
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class TransientRead(OSError):
    """The store did not answer this time (locked, unreachable, a 5xx); trying again may work."""


@dataclass(frozen=True)
class VersionRow:
    """One model version as the store holds it.

    Attributes:
        name: registered model name.
        version: version number (a string, as MLflow spells it).
        run_id: the run that logged it (None when unknown).
        tags: the version's tags.
        aliases: the aliases naming it.
    """

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


class LightReads(Protocol):
    """The registry reads that need no MLflow import."""

    def alias(self, name: str, alias: str) -> VersionRow | None:
        """The version holding ``alias``; None when the model or the alias does not exist."""

    def version(self, name: str, version: str) -> VersionRow | None:
        """Version ``version``; None when it does not exist."""

    def model_tags(self, name: str) -> dict[str, str] | None:
        """The registered model's own tags; None when the model does not exist."""

    def download_uri(self, name: str, version: str) -> str | None:
        """Where the version's artifacts live (MLflow's ``get_model_version_download_uri``); None: no such version."""

    def run_metrics(self, run_id: str) -> dict[str, float] | None:
        """The run's metrics, each its latest value (MLflow's ``get_run(...).data.metrics``); None: no such run."""


def light_reads(registry_uri: str | None) -> LightReads | None:
    """The MLflow-free reader for ``registry_uri``; None when only MLflow can read it (other schemes, no URI)."""
    if not registry_uri:
        return None
    if registry_uri.startswith("sqlite:///"):
        return SqliteReads(registry_uri.removeprefix("sqlite:///"))
    if registry_uri.startswith(("http://", "https://")):
        return RestReads(registry_uri)
    return None


class SqliteReads:
    """Read-only queries on an MLflow SQLite store (one short connection per read: readers never hold a lock)."""

    def __init__(self, path: str, busy_seconds: float = 5.0) -> None:
        self.path = Path(path if path.startswith("/") else os.path.abspath(path))
        self.busy_seconds = busy_seconds
        self._scoped: bool | None = None  # whether the tables have MLflow 3.5+'s workspace column

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        """The rows of ``sql``; None when there is no store (no file or no registry tables yet)."""
        if not self.path.exists():
            return None
        try:
            with sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.busy_seconds) as db:
                if self._scoped is None:
                    columns = {row[1] for row in db.execute("PRAGMA table_info(model_versions)")}
                    self._scoped = "workspace" in columns
                if self._scoped:
                    sql, params = sql.replace("{ws}", " AND workspace = ?"), (*params, _WORKSPACE)
                else:
                    sql = sql.replace("{ws}", "")
                return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            # "database is locked", "unable to open": the store is there but does not answer now.
            raise TransientRead(f"{self.path}: {exc}") from exc

    def _live_version(self, name: str, version: str) -> tuple[Any, ...] | None:
        """``(version, run_id, storage_location, source)`` of a version that is not deleted; None otherwise."""
        rows = self._query(
            "SELECT version, run_id, storage_location, source FROM model_versions WHERE name = ? AND version = ? "
            "AND (current_stage IS NULL OR current_stage != ?){ws}",
            (name, int(version), _DELETED_STAGE),
        )
        return rows[0] if rows else None

    def _row(self, name: str, version: str) -> VersionRow | None:
        row = self._live_version(name, version)
        rows = [row] if row is not None else None
        if not rows:
            return None
        tags = self._query(
            "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?{ws}", (name, int(version))
        )
        aliases = self._query(
            "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?{ws} ORDER BY alias",
            (name, int(version)),
        )
        return VersionRow(
            name,
            str(rows[0][0]),
            rows[0][1] or None,
            {str(k): str(v) for k, v in tags or ()},
            tuple(str(a[0]) for a in aliases or ()),
        )

    def alias(self, name: str, alias: str) -> VersionRow | None:
        rows = self._query(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?{ws}", (name, alias)
        )
        return self._row(name, str(rows[0][0])) if rows else None

    def version(self, name: str, version: str) -> VersionRow | None:
        return self._row(name, version) if version.isdigit() else None

    def model_tags(self, name: str) -> dict[str, str] | None:
        if not self._query("SELECT name FROM registered_models WHERE name = ?{ws}", (name,)):
            return None
        rows = self._query("SELECT key, value FROM registered_model_tags WHERE name = ?{ws}", (name,))
        return {str(k): str(v) for k, v in rows or ()}

    def download_uri(self, name: str, version: str) -> str | None:
        row = self._live_version(name, version) if version.isdigit() else None
        return None if row is None else str(row[2] or row[3])

    def run_metrics(self, run_id: str) -> dict[str, float] | None:
        rows = self._query(
            # {ws}: scoped by MLflow 3.5+'s workspace, which runs have through their experiment.
            "SELECT m.key, m.value, m.is_nan FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "LEFT JOIN latest_metrics m ON m.run_uuid = r.run_uuid WHERE r.run_uuid = ?{ws}",
            (run_id,),
        )
        if not rows:
            return None
        # MLflow stores a NaN as 0 with is_nan set, and gives NaN back.
        return {str(k): math.nan if nan else float(v) for k, v, nan in rows if k is not None}


class RestReads:
    """MLflow's REST API with urllib (no MLflow, no extra client)."""

    def __init__(self, base_uri: str, timeout_seconds: float = 10.0) -> None:
        self.base = base_uri.rstrip("/")
        self.timeout = timeout_seconds

    def _headers(self) -> dict[str, str]:
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            return {"Authorization": f"Bearer {token}"}
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and password:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        return {}

    def _get(self, endpoint: str, **params: str) -> dict[str, Any] | None:
        """The JSON answer of ``GET endpoint``; None when MLflow says the thing does not exist."""
        url = f"{self.base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - http(s) only
                body: dict[str, Any] = json.loads(answer.read() or b"{}")
                return body
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            if exc.code == 404 or code in _NOT_FOUND:
                return None
            if exc.code >= 500 or exc.code == 429:
                raise TransientRead(f"{url}: HTTP {exc.code} {code or ''}".rstrip()) from exc
            raise RuntimeError(f"MLflow answered {url} with HTTP {exc.code} {code or ''}".rstrip()) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransientRead(f"{url}: {exc}") from exc

    def alias(self, name: str, alias: str) -> VersionRow | None:
        body = self._get("registered-models/alias", name=name, alias=alias)
        return _version_row(body.get("model_version")) if body else None

    def version(self, name: str, version: str) -> VersionRow | None:
        body = self._get("model-versions/get", name=name, version=version)
        return _version_row(body.get("model_version")) if body else None

    def model_tags(self, name: str) -> dict[str, str] | None:
        body = self._get("registered-models/get", name=name)
        if not body:
            return None
        return {str(t["key"]): str(t.get("value", "")) for t in body.get("registered_model", {}).get("tags", [])}

    def download_uri(self, name: str, version: str) -> str | None:
        body = self._get("model-versions/get-download-uri", name=name, version=version)
        return str(body["artifact_uri"]) if body and body.get("artifact_uri") else None

    def run_metrics(self, run_id: str) -> dict[str, float] | None:
        body = self._get("runs/get", run_id=run_id)
        if not body:
            return None
        return {str(m["key"]): float(m["value"]) for m in body.get("run", {}).get("data", {}).get("metrics", [])}


def _error_code(exc: urllib.error.HTTPError) -> str | None:
    try:
        return str(json.loads(exc.read() or b"{}").get("error_code")) or None
    except (ValueError, OSError):
        return None


def _version_row(mv: dict[str, Any] | None) -> VersionRow | None:
    if not mv:
        return None
    return VersionRow(
        str(mv["name"]),
        str(mv["version"]),
        mv.get("run_id") or None,
        {str(t["key"]): str(t.get("value", "")) for t in mv.get("tags", [])},
        tuple(str(a) for a in mv.get("aliases", [])),
    )
