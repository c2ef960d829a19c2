"""Fixtures for the model server: a real MLflow registry with good and broken versions, live servers.

One session-scoped MLflow store (SQLite + a local artifact folder) holds four
versions of the model ``clf``, trained on scikit-learn's bundled breast-cancer
data plus a string and an integer column (so validation sees every kind):

    v1  histogram gradient boosting        (good)
    v2  logistic regression                (good, different answers)
    v3  like v1, its model.skops overwritten with garbage after registration (fails to load)
    v4  FailSwitchClassifier               (fails while ``switch`` exists; see _estimators.py)

Tests set the aliases they need (``@champion``, ``@previous``) at their start.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from serving import processes
from serving.processes import wait_until
from tests import _serving_env

REPO_ROOT = Path(__file__).resolve().parents[2]
#: One client for probes, with a new connection per request (so requests reach any worker) and
#: without the CA-bundle loading that every ``httpx.get()`` pays.
http = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
MODEL = "clf"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class ModelStore:
    tracking_uri: str
    root: Path
    switch: Path
    versions: dict[str, str]
    frame: pd.DataFrame

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def set_aliases(self, champion: str | None, previous: str | None = None) -> None:
        client = self.client()
        for alias, version in (("champion", champion), ("previous", previous)):
            if version is None:
                try:
                    client.delete_registered_model_alias(MODEL, alias)
                except Exception:
                    pass
            else:
                client.set_registered_model_alias(MODEL, alias, version)

    def records(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        rows = self.frame.iloc[start : start + n]
        records: list[dict[str, Any]] = json.loads(rows.to_json(orient="records"))
        return records


def _training_frame() -> tuple[pd.DataFrame, pd.Series]:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :8].copy()
    X.columns = [c.replace(" ", "_") for c in X.columns]
    rng = np.random.default_rng(0)
    X["segment"] = rng.choice(["retail", "online", "travel"], size=len(X))
    X["visits"] = rng.integers(0, 50, size=len(X)).astype("int64")
    return X, y


def _pipeline(final: Any, numeric: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["segment"]), ("num", StandardScaler(), numeric)]
    )
    return Pipeline([("pre", pre), ("model", final)])


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from serving.modelio import log_sklearn_model
    from tests.serving._estimators import TRUSTED, FailSwitchClassifier

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    switch = root / "switch"
    X, y = _training_frame()
    numeric = [c for c in X.columns if c != "segment"]
    models = {
        "hgb": _pipeline(HistGradientBoostingClassifier(max_iter=20), numeric).fit(X, y),
        "lr": _pipeline(LogisticRegression(max_iter=2000), numeric).fit(X, y),
        "broken": _pipeline(HistGradientBoostingClassifier(max_iter=5), numeric).fit(X, y),
        "switch": _pipeline(FailSwitchClassifier(str(switch)), numeric).fit(X, y),
    }
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    versions: dict[str, str] = {}
    model_ids: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        # Requirements inference starts a subprocess per model (~4 s); the format is what matters here.
        mp.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: ["scikit-learn"])
        experiment = mlflow.create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
        for label, model in models.items():
            with mlflow.start_run(experiment_id=experiment):
                info = log_sklearn_model(
                    model, X.head(5), registered_model_name=MODEL, extra_trusted=[TRUSTED] if label == "switch" else ()
                )
            versions[label] = str(info.registered_model_version)
            model_ids[label] = info.model_id
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    artifacts = Path(client.get_logged_model(model_ids["broken"]).artifact_location.removeprefix("file://"))
    (artifacts / "model.skops").write_bytes(b"this is not a skops file")
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])
    yield ModelStore(uri, root, switch, versions, X)


# -- live servers ------------------------------------------------------------------
@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: int
    lake_root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replicas(self) -> int:
        """``--replicas`` of the running server (the CLI execs ``python -m serving`` with it), else 1."""
        argv = processes.argv(self.proc.pid)
        return int(argv[argv.index("--replicas") + 1]) if "--replicas" in argv[:-1] else 1

    def worker_pids(self) -> list[int]:
        """The workers: the master's children, or under a supervisor (``--replicas``) every master's."""
        children = processes.children(self.proc.pid)
        if self.replicas() == 1:
            return children
        return [w for master in children for w in processes.children(master)]

    def ready_pids(self) -> set[int]:
        """Workers that report a loaded primary model in the (multiprocess) metrics."""
        try:
            text = http.get(f"{self.url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return set()
        pids = set()
        for line in text.splitlines():
            if line.startswith("selfheal_model_version{") and 'role="primary"' in line and not line.endswith(" 0.0"):
                pid = line.split('pid="', 1)[1].split('"', 1)[0]
                pids.add(int(pid))
        return pids & set(self.worker_pids())

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            pids = self.worker_pids()
            return len(pids) == self.workers * self.replicas() and set(pids) <= self.ready_pids()

        try:
            wait_until(ready, timeout, "every worker to load its model", interval=0.2)
        except TimeoutError:
            raise AssertionError(f"server not ready after {timeout}s:\n{self.tail()}") from None

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the master with ``sig``, wait for it, and kill any worker it left behind (a SIGKILLed master's)."""
        workers = self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        processes.kill(workers)
        return int(self.proc.returncode)


def server_env(store: ModelStore, tmp_path: Path, **overrides: Any) -> dict[str, str]:
    lake_root = overrides.pop("lake_root", tmp_path / "lake")  # None: no lake
    return _serving_env.server_env(store.tracking_uri, MODEL, ADMIN_TOKEN, lake_root, tmp_path, **overrides)


def start_server(
    store: ModelStore, tmp_path: Path, *, workers: int = 2, argv: list[str] | None = None, **overrides: Any
) -> LiveServer:
    port = processes.free_port()
    return launch(server_env(store, tmp_path, **overrides), port, tmp_path, tmp_path / "lake", workers, argv)


def launch(
    env: dict[str, str], port: int, tmp_path: Path, lake_root: Path, workers: int = 2, argv: list[str] | None = None
) -> LiveServer:
    """Start ``python -m serving`` (or ``argv``) with ``env`` on ``port`` and wait until every worker is ready."""
    log = tmp_path / f"server-{port}.log"
    cmd = [*(argv or [sys.executable, "-m", "serving", "--log-level", "info"]), "--port", str(port)]
    cmd += ["--workers", str(workers)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(proc, port, log, workers, lake_root)
    try:
        server.wait_ready()
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture
def live_server(model_store: ModelStore, tmp_path: Path) -> Iterator[Any]:
    """A factory of live servers that are all stopped at the end of the test."""
    started: list[LiveServer] = []

    def start(**kwargs: Any) -> LiveServer:
        server = start_server(model_store, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- load ----------------------------------------------------------------------------
def predict_bodies(store: ModelStore, n: int = 20) -> list[bytes]:
    """Request bodies for load: single records and one list of three."""
    records = store.records(n)
    return [orjson.dumps(r) for r in records] + [orjson.dumps(records[:3])]


@dataclass
class Load:
    """Threads posting /predict in a loop (bounded in count and time) and counting the answers."""

    url: str
    bodies: list[bytes]
    threads: int = 4
    max_requests: int = 20_000
    max_seconds: float = 120.0
    statuses: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("2"))

    def start(self) -> Load:
        for i in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _loop(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10.0) as client:
            n = 0
            while not self._stop.is_set() and time.monotonic() < deadline and self.total < self.max_requests:
                body = self.bodies[(index + n) % len(self.bodies)]
                n += 1
                try:
                    response = client.post(
                        f"{self.url}/predict", content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.statuses[f"error:{type(exc).__name__}"] += 1
                    continue
                with self._lock:
                    self.statuses[str(response.status_code)] += 1
                    if response.status_code == 200:
                        answer = response.json()
                        self.versions[answer["model_version"]] += 1
                        self.served_by[answer["served_by"]] += 1

    def wait_for(self, requests: int, timeout: float = 60.0) -> None:
        """Wait for ``requests`` more answers (at most ``timeout`` s: the test's asserts say what was missing)."""
        target = self.total + requests
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.total >= target, timeout, f"{requests} more requests", interval=0.02)

    def stop(self) -> Load:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)
        return self


# -- versions the server must refuse ---------------------------------------------------
GUARDED = "clf-guarded"


@dataclass
class GuardedVersions:
    """Versions of the model ``clf-guarded`` in the session store (all with the signature of ``clf`` v2).

    ``good``: the skops artifact of ``clf`` v2 (under the store's artifact root).
    ``foreign``: that model cloudpickled in a folder outside the artifact root.
    ``pickled``: the same cloudpickle, inside the artifact root.
    Loading either pickle writes ``marker`` (chaos.registry._foreign).
    """

    root: Path
    good: str
    foreign: str
    pickled: str
    marker: Path


@pytest.fixture(scope="session")
def guarded_versions(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> GuardedVersions:
    from urllib.parse import unquote, urlparse

    from chaos.registry._foreign import write_artifact
    from serving.modelio import load_sklearn_model

    client = model_store.client()
    source = client.get_model_version_download_uri(MODEL, model_store.versions["lr"])
    template = Path(unquote(urlparse(source).path))
    model = load_sklearn_model(template)
    outside = tmp_path_factory.mktemp("outside-the-store")
    marker = outside / "foreign-code-ran"
    root = model_store.root / "artifacts"
    sources = {
        "good": template,
        "foreign": write_artifact(template, outside / "model", model, str(marker)),
        "pickled": write_artifact(template, root / "planted" / "model", model, str(marker)),
    }
    client.create_registered_model(GUARDED)
    versions = {k: str(client.create_model_version(GUARDED, source=p.as_uri()).version) for k, p in sources.items()}
    return GuardedVersions(root, versions["good"], versions["foreign"], versions["pickled"], marker)
