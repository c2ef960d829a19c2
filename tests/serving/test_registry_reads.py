"""The MLflow-free registry reads answer exactly what MLflow's own client answers, on a store MLflow wrote.

MLflow writes (register, alias, tag, delete) with its real client; ``SqliteReads`` and
``RestReads`` (against a real ``mlflow server`` on the same store) read back, and
``ModelRegistry`` with and without its light path must agree.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints.exceptions import RegistryUnavailable
from serving import processes
from serving.registry import ModelNotFound, ModelRegistry
from serving.registry_reads import LightReads, RestReads, SqliteReads, light_reads

NAME = "m"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow 3 store: three versions, aliases, version and model tags, version 3 deleted."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("reads")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME, tags={"selfheal.release": '{"mode": "shadow"}'})
    for run in ("a" * 32, "b" * 32, "c" * 32):
        client.create_model_version(NAME, source=f"file://{folder}/artifacts/{run}", run_id=run)
    client.set_registered_model_alias(NAME, "champion", "2")
    client.set_registered_model_alias(NAME, "previous", "1")
    client.set_registered_model_alias(NAME, "spare", "2")
    client.set_model_version_tag(NAME, "2", "selfheal.baseline", '{"prediction": 0}')
    client.set_model_version_tag(NAME, "2", "k", "v")
    client.set_registered_model_tag(NAME, "other", "x")
    client.delete_model_version(NAME, "3")
    client.create_registered_model("other-model")
    yield uri


def _as_mlflow(uri: str) -> ModelRegistry:
    return ModelRegistry(NAME, tracking_uri=uri, light_reads=False)


def _answers(registry: ModelRegistry) -> dict[str, Any]:
    def ref(r: Any) -> Any:
        return None if r is None else (r.name, r.version, dict(r.tags), r.run_id, tuple(sorted(r.aliases)))

    return {
        "champion": ref(registry.by_alias("champion")),
        "previous": ref(registry.by_alias("previous")),
        "missing alias": ref(registry.by_alias("nobody")),
        "v1": ref(registry.by_version("1")),
        "deleted v3": ref(registry.by_version("3")),
        "v9": ref(registry.by_version("9")),
        "not a number": ref(registry.by_version("x")),
        "model tags": registry.model_tags(),
    }


def test_sqlite_reads_answer_what_mlflow_answers(store: str) -> None:
    light = ModelRegistry(NAME, tracking_uri=store)
    assert isinstance(light.light, SqliteReads)
    expected = _answers(_as_mlflow(store))
    assert expected["champion"][2] == {"selfheal.baseline": '{"prediction": 0}', "k": "v"}  # the store holds them
    assert _answers(light) == expected
    assert light.light.download_uri(NAME, "2") == _as_mlflow(store).client.get_model_version_download_uri(NAME, "2")
    with pytest.raises(ModelNotFound):
        light.version("3")


def test_a_missing_model_or_store_is_an_answer_not_an_outage(tmp_path: Path, store: str) -> None:
    nothing = ModelRegistry(NAME, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert (nothing.by_alias("champion"), nothing.by_version("1"), nothing.model_tags()) == (None, None, {})
    other = ModelRegistry("no-such-model", tracking_uri=store)
    assert (other.by_alias("champion"), other.model_tags()) == (None, {})


def test_a_locked_store_is_an_outage_after_the_retries(tmp_path: Path) -> None:
    from chaos.registry.actions import make_tracking_store_unreachable, restore_tracking_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _as_mlflow(uri).client.create_registered_model(NAME)
    registry = ModelRegistry(NAME, tracking_uri=uri, attempts=2, wait_max_seconds=0.01, read_seconds=0.5)
    locked = make_tracking_store_unreachable(uri, duration=60)
    try:
        with pytest.raises(RegistryUnavailable, match="did not answer|no answer"):
            registry.by_alias("champion")
        assert processes.alive(locked["pid"])
    finally:
        restore_tracking_store(uri)
    assert registry.model_tags() == {}


def test_the_serving_import_path_has_no_mlflow(store: str) -> None:
    """Reading the registry light imports neither MLflow nor Prefect."""
    code = (
        "import sys; from serving.registry import ModelRegistry; "
        f"r = ModelRegistry({NAME!r}, tracking_uri={store!r}); print(r.by_alias('champion').version); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["2", "[]"]


@pytest.fixture(scope="module")
def mlflow_server(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on the same store (its REST API is what RestReads reads)."""
    port = processes.free_port()
    folder = tmp_path_factory.mktemp("server")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--default-artifact-root", str(folder)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    reads = RestReads(base, timeout_seconds=2)
    try:
        processes.wait_until(lambda: _answers_once(reads), 90, "mlflow server", interval=0.5)
        yield base
    finally:
        processes.stop(processes.process_tree(server.pid))


def _answers_once(reads: LightReads) -> bool:
    try:
        reads.model_tags(NAME)
    except OSError:
        return False
    return True


def test_rest_reads_answer_what_mlflow_answers(store: str, mlflow_server: str) -> None:
    light = ModelRegistry(NAME, tracking_uri=mlflow_server)
    assert isinstance(light.light, RestReads)
    assert _answers(light) == _answers(_as_mlflow(store))
    assert light.light.download_uri(NAME, "2") == _as_mlflow(store).client.get_model_version_download_uri(NAME, "2")
    assert light.light.download_uri(NAME, "9") is None
    client = _as_mlflow(store).client
    run_id = client.create_run(client.create_experiment("rest-metrics")).info.run_id
    client.log_metric(run_id, "roc_auc", 0.9)
    client.log_metric(run_id, "roc_auc", 0.93, step=1)
    client.log_metric(run_id, "per_batch.roc_auc", 0.88)
    assert light.light.run_metrics(run_id) == dict(client.get_run(run_id).data.metrics)
    assert light.light.run_metrics(run_id) == {"roc_auc": 0.93, "per_batch.roc_auc": 0.88}
    assert light.light.run_metrics("0" * 32) is None


def test_unreadable_schemes_fall_back_to_mlflow() -> None:
    assert light_reads("databricks") is None
    assert light_reads(None) is None
    assert ModelRegistry(NAME, tracking_uri="file:///tmp/mlruns").light is None
