"""The production overlay's stores for real (issue 18): MLflow on PostgreSQL with its artifacts on S3.

``mlflow server`` runs on a real PostgreSQL with ``--default-artifact-root s3://...`` and
``--no-serve-artifacts`` (as deployments/k8s/overlays/production runs it), on a real
S3-compatible store (SeaweedFS). The pipeline trains and registers a champion whose
artifacts it writes to S3 itself (boto3); a model server started with the overlay's
settings (tracking URI of that server, ``SELFHEAL_ARTIFACT_ROOT=s3://...``, the lake on S3)
downloads it from S3 after checking its location, and answers with it. A server whose
artifact root is another prefix refuses the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.local.object_store import ACCESS_KEY, SECRET_KEY, SeaweedFS
from flows.local.postgres import PostgreSQL
from serving import processes
from tests._serving_env import REPO_ROOT, server_env
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.serving.conftest import ADMIN_TOKEN, launch

pytestmark = pytest.mark.integration
MODEL = "test-binary-model"  # write_config's model name for the binary task


def _s3_env(store: SeaweedFS) -> dict[str, str]:
    """What boto3 (MLflow's S3 artifact store) reads: the overlay's Secret gives the same keys."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": store.endpoint,
    }


@pytest.fixture
def tracking_server(object_store: SeaweedFS, postgres: PostgreSQL, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``mlflow server`` on PostgreSQL, artifacts on S3 and not proxied: (its URL, the artifact root)."""
    artifacts = f"{object_store.new_root('mlflow')}/artifacts"
    port = processes.free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--default-artifact-root", artifacts, "--no-serve-artifacts"]
    env = {"MLFLOW_BACKEND_STORE_URI": postgres.database("mlflow_s3"), "MLFLOW_ENABLE_TELEMETRY": "false"}
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = subprocess.Popen(
        command, env={**_inherited(), **_s3_env(object_store), **env}, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until(lambda: processes.http_ok(f"{url}/health"), 120, f"mlflow server (log {log.name})", 0.5)
        yield url, artifacts
    finally:
        processes.stop(processes.process_tree(server.pid))
        log.close()


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "MLFLOW_", "AWS_"))}


def _server_env(store: SeaweedFS, tmp_path: Path, tracking: str, lake: str, artifact_root: str) -> dict[str, str]:
    """The overlay's model server settings: registry via the tracking server, artifacts and lake on S3."""
    env = server_env(tracking, MODEL, ADMIN_TOKEN, None, tmp_path / f"run-{processes.free_port()}")
    env.update(_s3_env(store))
    env["SELFHEAL_LAKE_ROOT"] = lake
    env["SELFHEAL_LAKE_STORAGE_OPTIONS"] = json.dumps(store.storage_options)
    env["SELFHEAL_ARTIFACT_ROOT"] = artifact_root
    return env


def test_a_champion_with_artifacts_on_s3_is_trained_registered_and_served(
    object_store: SeaweedFS,
    tracking_server: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None,
) -> None:
    from flows.pipeline.flow import pipeline_flow
    from flows.registry import CHAMPION, Registry

    tracking, artifacts = tracking_server
    for key, value in _s3_env(object_store).items():
        monkeypatch.setenv(key, value)
    frame, target = dataset_frame("binary")
    write_batches(frame, tmp_path / "landing", parts=2)
    lake = {"root": object_store.new_root("lake"), "storage_options": object_store.storage_options}
    config = write_config(tmp_path, "binary", target, lake=lake, tracking_uri=tracking, artifact_root=artifacts)

    assert pipeline_flow(str(config)).outcome == "promoted"

    registry = Registry(tracking, MODEL)
    champion = registry.client.get_model_version_by_alias(MODEL, CHAMPION)
    source = registry.client.get_model_version_download_uri(MODEL, champion.version)
    assert source.startswith(f"{artifacts}/"), source  # written to S3 by the pipeline, not proxied
    record = {k: v for k, v in frame.drop(columns=[target]).iloc[0].items()}

    env = _server_env(object_store, tmp_path, tracking, lake["root"], artifacts)
    server = launch(env, processes.free_port(), tmp_path, tmp_path / "unused", workers=1)
    try:
        answer = httpx.post(f"{server.url}/predict", content=json.dumps(record, default=str), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == str(champion.version)
    finally:
        server.stop()

    # The same model under a server whose artifact root is another prefix: refused, never loaded.
    elsewhere = f"{object_store.new_root('other')}/artifacts"
    env = _server_env(object_store, tmp_path, tracking, lake["root"], elsewhere)
    port = processes.free_port()
    log = tmp_path / "refusing-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port), "--workers", "1"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = processes.wait_until(lambda: _refused(port), 90, f"the refusal in /ready (log {log})", 0.5)
        assert ready["refused"]["reason"] == "outside_root" and ready["refused"]["version"] == str(champion.version)
        assert (
            httpx.post(f"http://127.0.0.1:{port}/predict", content=json.dumps(record, default=str)).status_code != 200
        )
    finally:
        processes.stop(processes.process_tree(proc.pid))


def _refused(port: int) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if body.get("refused") else None
