"""The production topology's stores on one machine: PostgreSQL, an S3 store, and the servers on them.

``ProductionStores`` starts, each with its log under ``<workdir>/run/``:

- a PostgreSQL server (``flows.local.postgres``) with one database for MLflow and one for Prefect;
- an S3-compatible store (SeaweedFS, ``flows.local.object_store``) with the bucket ``selfheal``:
  the lake under ``s3://selfheal/lake``, MLflow's artifacts under ``s3://selfheal/artifacts``;
- ``mlflow server`` on the MLflow database, artifacts on S3 and not proxied (clients read and
  write them with boto3), as deployments/k8s/overlays/production runs it;
- ``prefect server start`` on the Prefect database.

Everything listens on 127.0.0.1 on free ports and is stopped on exit, newest first.
They run at normal priority: the healer waits on them at every step (reading the lake
on S3, the registry), so lowering them (nice 19) starved healing itself (a retrain's
MTTR went from ~26 s to 119 s on 2 cores).
``environment()`` is what clients of these stores need (S3 keys for boto3 and the S3 endpoint,
the Prefect API); ``settings()`` is what selfheal.yaml takes from them.

Example:
    >>> with ProductionStores(workdir) as stores:
    ...     os.environ.update(stores.environment())
    ...     data.update(stores.settings())
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from checkpoints.exceptions import SelfhealError
from flows.local.object_store import ACCESS_KEY, SECRET_KEY, SeaweedFS
from flows.local.postgres import PostgreSQL
from serving import processes

logger = logging.getLogger(__name__)

BUCKET = "selfheal"
_START_SECONDS = 180.0
#: The Prefect server's settings these stores decide, whatever ``server_settings`` says.
_OWN_SERVER_SETTINGS = ("PREFECT_SERVER_DATABASE_", "PREFECT_SERVER_UI_", "PREFECT_SERVER_ANALYTICS_")


@dataclass(frozen=True)
class Detached:
    """Stores left running by ``ProductionStores.detach``.

    Attributes:
        pids: service name -> the pid that leads it (``postgres``, ``object-store``,
            ``mlflow-server``, ``prefect-server``).
        remove: folders to delete once they are stopped (PostgreSQL's, when it had to
            live in a temp dir of its own).
    """

    pids: dict[str, int]
    remove: list[str]


class ProductionStores:
    """PostgreSQL, SeaweedFS, an MLflow server and a Prefect server in ``workdir``, stopped on exit."""

    def __init__(
        self,
        workdir: Path,
        prefect_port: int | None = None,
        *,
        keep: bool = False,
        timeout: float = _START_SECONDS,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        """``keep``: databases named ``mlflow`` and ``prefect``, reused when ``workdir`` has them
        (``selfheal up``); else fresh ones of random names (the demo, the tests). ``timeout``:
        seconds each server gets to answer. ``server_settings``: ``PREFECT_SERVER_*`` variables for
        the Prefect server (``selfheal up`` passes its caller's), except those of its database, UI
        and analytics, which these stores set; it takes no other setting from the caller's environment."""
        self.workdir = workdir
        self.prefect_port = prefect_port
        self.keep = keep
        self.timeout = timeout
        self.run_dir = workdir / "run"
        self.postgres = PostgreSQL(workdir / "postgres", keep=keep)
        self.object_store = SeaweedFS(workdir / "s3", bucket=BUCKET)
        self.tracking_uri = ""
        self.prefect_api_url = ""
        self.mlflow_database = ""  # SQLAlchemy URIs of the two databases, once started
        self.prefect_database = ""
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._frozen: list[int] = []  # the MLflow server's processes while it hangs
        self._timers: list[threading.Timer] = []  # the undos of the faults in flight
        self._detached = False
        self._server_settings = {
            k: v
            for k, v in (server_settings or {}).items()
            if k.startswith("PREFECT_SERVER_") and not k.startswith(_OWN_SERVER_SETTINGS)
        }

    artifact_root = f"s3://{BUCKET}/artifacts"
    """Where the MLflow server keeps the models' artifacts (written and read with boto3)."""
    lake_root = f"s3://{BUCKET}/lake"
    """The lake's root on the object store."""

    def environment(self) -> dict[str, str]:
        """What clients need: the S3 keys and endpoint (boto3 reads them for MLflow's artifacts), the Prefect API."""
        env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.object_store.endpoint,
        }
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        return env

    def settings(self) -> dict[str, Any]:
        """The selfheal.yaml values these stores set: tracking URI, artifact root, the lake and its storage options."""
        return {
            "tracking_uri": self.tracking_uri,
            "artifact_root": self.artifact_root,
            "lake": {"root": self.lake_root, "storage_options": self.object_store.storage_options},
        }

    def __enter__(self) -> ProductionStores:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres.__enter__()
            self.object_store.__enter__()
            self._start_mlflow()
            self._start_prefect()
            for name, url in (("mlflow-server", self.tracking_uri), ("prefect-server", self.prefect_api_url)):
                self._wait(name, f"{url}/health")
        except BaseException:
            self.close()
            raise
        return self

    def _start_mlflow(self) -> None:
        port = processes.free_port()
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--default-artifact-root", self.artifact_root, "--no-serve-artifacts"]
        self.mlflow_database = self.postgres.database("mlflow", unique=not self.keep)
        env = {"MLFLOW_BACKEND_STORE_URI": self.mlflow_database, "MLFLOW_ENABLE_TELEMETRY": "false"}
        self._spawn("mlflow-server", argv, env)
        self.tracking_uri = f"http://127.0.0.1:{port}"

    def _start_prefect(self) -> None:
        port = self.prefect_port or processes.free_port()
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        self.prefect_database = self.postgres.database("prefect", driver="asyncpg", unique=not self.keep)
        env = {
            **self._server_settings,
            "PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_database,
            "PREFECT_HOME": str(self.workdir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        self._spawn("prefect-server", argv, env)
        self.prefect_api_url = f"http://127.0.0.1:{port}/api"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SELFHEAL_"))}
        with (self.run_dir / f"{name}.log").open("ab") as log:
            self._servers[name] = subprocess.Popen(
                argv,
                env={**inherited, **self.environment(), **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s (pid %d)", name, self._servers[name].pid)

    def _wait(self, name: str, url: str) -> None:
        proc = self._servers[name]

        def answers() -> bool:
            if proc.poll() is not None:
                raise SelfhealError(f"{name} exited with {proc.returncode}; see {self.run_dir / name}.log")
            return processes.http_ok(url)

        try:
            processes.wait_until(answers, self.timeout, f"{name} at {url}", interval=0.5)
        except TimeoutError:
            raise SelfhealError(f"{name} did not answer {url} in time; see {self.run_dir / name}.log") from None

    def pids(self) -> list[int]:
        """Every process of the stores and servers now (PostgreSQL's postmaster and the backends it forked)."""
        roots = [proc.pid for proc in self._servers.values()]
        if self.object_store.proc is not None:
            roots.append(self.object_store.proc.pid)
        postmaster = self.postgres.data / "postmaster.pid"
        if postmaster.exists():
            roots.append(int(postmaster.read_text().split()[0]))
        return sorted({pid for root in roots for pid in processes.process_tree(root)})

    def detach(self) -> Detached:
        """Leave everything running past this object (``selfheal up``): what stops it later.

        After this, ``close`` stops nothing; stop the pids (servers first, PostgreSQL's
        postmaster last: SIGINT is its fast shutdown) and then remove ``remove``.
        """
        postmaster = self.postgres.data / "postmaster.pid"
        pids = {name: proc.pid for name, proc in self._servers.items()}
        if self.object_store.proc is not None:
            pids["object-store"] = self.object_store.proc.pid
        pids["postgres"] = int(postmaster.read_text().split()[0])
        self._detached = True
        return Detached(pids, [str(self.postgres.workdir)] if self.postgres.temporary else [])

    def hang_tracking_server(self, seconds: float) -> int:
        """Freeze the MLflow server (SIGSTOP) for ``seconds``: it accepts connections and answers none.

        It is thawed (SIGCONT) after ``seconds``, or on exit. Returns its pid.
        """
        proc = self._servers["mlflow-server"]
        self._frozen = processes.process_tree(proc.pid)
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)
        self._after(seconds, self._thaw)
        return proc.pid

    def _thaw(self) -> None:
        frozen, self._frozen = self._frozen, []
        for pid in frozen:
            if processes.alive(pid):
                os.kill(pid, signal.SIGCONT)

    def stop_postgres(self, seconds: float) -> None:
        """Stop PostgreSQL (``pg_ctl stop -m fast``: every connection is cut) and start it again after ``seconds``."""
        self.postgres.stop()
        self._after(seconds, self.postgres.start)

    def _after(self, seconds: float, undo: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, undo)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def close(self) -> None:
        """Stop the servers, then the stores (what was started, newest first); a pending restart is not made.

        After ``detach`` it stops nothing.
        """
        if self._detached:
            return
        for timer in self._timers:
            timer.cancel()
            timer.join()
        self._thaw()  # a stopped process would take SIGTERM only once it ran again
        for name in reversed(list(self._servers)):
            proc = self._servers.pop(name)
            processes.stop(processes.process_tree(proc.pid), grace=10)
            proc.wait(timeout=10)
        self.object_store.close()
        self.postgres.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
