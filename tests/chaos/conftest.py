"""Fixtures for the chaos extension: a fault ledger, a real MLflow store with a fraud model, live servers.

Nothing is mocked: servers are real ``python -m serving`` processes (gunicorn), models
are real scikit-learn pipelines in a real MLflow SQLite store, lakes are real Delta
tables in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving import processes
from tests import _serving_env

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "fraud-detector"
TARGET = "is_fraud"
ADMIN_TOKEN = "chaos-test-admin-token-0123456789"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("tc") is None or shutil.which("ip") is None,
    reason="network faults need root and iproute2 (ip, tc): network namespaces, veth pairs and qdiscs",
)


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    """An experiment configuration naming a fresh fault ledger, with a run already marked."""
    from chaos import ledger

    cfg: dict[str, Any] = {"selfheal_ledger": str(tmp_path / "ledger.jsonl")}
    ledger.record(cfg, "run", experiment="test")
    return cfg


# -- a model store ------------------------------------------------------------------
@dataclass
class FraudStore:
    """An MLflow store with ``fraud-detector`` v1 as champion, the lake its silver rows are in, a labeled batch."""

    tracking_uri: str
    root: Path
    lake_root: Path
    labeled: Path
    features: list[str]
    artifacts: Path | None = None
    """Where its versions' files are (a copy's database still names the template's); None: ``root/artifacts``."""

    @property
    def artifact_root(self) -> Path:
        return self.artifacts or self.root / "artifacts"

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def _fit(frame: Any, features: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    text = [c for c in features if str(frame[c].dtype) in ("object", "str", "string")]
    numbers = [c for c in features if c not in text]
    prepare = ColumnTransformer(
        [
            ("text", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), text),
            ("numbers", "passthrough", numbers),
        ]
    )
    model = Pipeline([("prepare", prepare), ("model", HistGradientBoostingClassifier(max_iter=60, random_state=0))])
    return model.fit(frame[features], frame[TARGET].astype("int64"))


def build_store(root: Path) -> FraudStore:
    """Train on three batches of the demo stream, register v1 as champion, write silver and a labeled batch."""
    import mlflow
    import pyarrow as pa

    from checkpoints import Lake
    from flows.demo.data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, generate_batch
    from serving.modelio import log_sklearn_model

    root.mkdir(parents=True, exist_ok=True)
    frames = [generate_batch(i, rows=1500, seed=3) for i in range(3)]
    import pandas as pd

    train = pd.concat(frames, ignore_index=True)
    features = [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
    for column in NUMERIC_FEATURES:
        train[column] = train[column].astype("float64")
    for column in CATEGORICAL_FEATURES:
        train[column] = train[column].astype(object)
    train[TARGET] = train[TARGET].astype("float64")
    lake_root = root / "lake"
    Lake(lake_root).append("silver", pa.Table.from_pandas(train[[*features, TARGET]], preserve_index=False))
    labeled = root / "labeled.parquet"
    generate_batch(5, rows=3000, seed=3).to_parquet(labeled, index=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with pytest.MonkeyPatch.context() as mp:
            # Requirements inference starts a subprocess per model (seconds); the format is what matters here.
            mp.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: ["scikit-learn"])
            experiment = mlflow.create_experiment("chaos-tests", artifact_location=(root / "artifacts").as_uri())
            with mlflow.start_run(experiment_id=experiment):
                mlflow.log_metric("roc_auc", 0.9)
                info = log_sklearn_model(_fit(train, features), train[features].head(5), registered_model_name=MODEL)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    store = FraudStore(uri, root, lake_root, labeled, features)
    store.client().set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))
    return store


@pytest.fixture(scope="session")
def fraud_store_template(tmp_path_factory: pytest.TempPathFactory) -> FraudStore:
    return build_store(tmp_path_factory.mktemp("fraud-store"))


@pytest.fixture
def fraud_store(fraud_store_template: FraudStore, tmp_path: Path) -> FraudStore:
    """A private copy of the store (tests move aliases and lock the database)."""
    root = tmp_path / "store"
    shutil.copytree(fraud_store_template.root, root)
    return FraudStore(
        f"sqlite:///{root / 'mlflow.db'}",
        root,
        root / "lake",
        root / "labeled.parquet",
        fraud_store_template.features,
        fraud_store_template.artifact_root,
    )


# -- live servers ---------------------------------------------------------------------
@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    command: list[str]
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        processes.stop([self.proc.pid, *processes.descendants(self.proc.pid)], grace=30.0)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def server_env(store: FraudStore, tmp_path: Path) -> dict[str, str]:
    env = _serving_env.server_env(store.tracking_uri, MODEL, ADMIN_TOKEN, tmp_path / "serving-lake", tmp_path)
    # MLflow 3.17 resolves models:/ downloads with the process-wide registry URI, whatever
    # the server passes (mlflow/store/artifact/models_artifact_repo.py); see the report.
    env.update({"MLFLOW_TRACKING_URI": store.tracking_uri, "MLFLOW_REGISTRY_URI": store.tracking_uri})
    env["SELFHEAL_ARTIFACT_ROOT"] = str(store.artifact_root)
    return env


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    def ready_or_exited() -> bool:
        return processes.http_ok(f"{url}/ready") or proc.poll() is not None

    try:
        processes.wait_until(ready_or_exited, timeout, "the server to be ready", interval=0.2)
    except TimeoutError:
        raise AssertionError(f"server not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}") from None
    if proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")


def start_server(store: FraudStore, folder: Path, workers: int = 2, replicas: int = 1) -> LiveServer:
    port = processes.free_port()
    log = folder / f"server-{port}.log"
    command = [sys.executable, "-m", "serving", "--port", str(port), "--workers", str(workers)]
    command += ["--replicas", str(replicas)]
    env = server_env(store, folder)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(proc, port, log, command, env)
    try:
        wait_ready(server.url, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def live_server(fraud_store: FraudStore, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """A factory of model servers (gunicorn, 2 workers) on a private store, all stopped at the end (faults welcome)."""
    started: list[LiveServer] = []

    def start(workers: int = 2, replicas: int = 1) -> LiveServer:
        started.append(start_server(fraud_store, tmp_path, workers, replicas))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(fraud_store_template: FraudStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests of a module that only look (no faults, no alias changes)."""
    server = start_server(fraud_store_template, tmp_path_factory.mktemp("shared-server"))
    yield server
    server.stop()
