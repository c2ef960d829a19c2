"""ModelRegistry's one rule for errors: transient ones retried then an outage, "not there" an answer, bugs as is."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    BAD_REQUEST,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from checkpoints.exceptions import RegistryUnavailable
from serving.registry import ModelNotFound, ModelRegistry, is_transient, outside_root


def failing(exc: BaseException, calls: list[int]) -> Callable[[Any], Any]:
    def fn(_client: Any) -> Any:
        calls.append(1)
        raise exc

    return fn


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry("m", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", attempts=3, wait_max_seconds=0.01)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("API request failed"), True),  # MLflow's default code is INTERNAL_ERROR (500)
        (MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED), True),
        (ConnectionRefusedError("refused"), True),
        (RuntimeError("(sqlite3.OperationalError) database is locked"), True),
        (MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (MlflowException("bad filter", error_code=BAD_REQUEST), False),
        (KeyError("a bug"), False),
    ],
)
def test_which_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_transient_error_is_retried_then_reported_as_an_outage(registry: ModelRegistry) -> None:
    calls: list[int] = []
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        registry.call("look", failing(MlflowException("locked", error_code=TEMPORARILY_UNAVAILABLE), calls))
    assert len(calls) == 3


def test_not_found_is_its_own_error_and_a_bug_is_not_an_outage(registry: ModelRegistry) -> None:
    calls: list[int] = []
    with pytest.raises(ModelNotFound):
        registry.call("look", failing(MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST), calls))
    with pytest.raises(KeyError):
        registry.call("look", failing(KeyError("a bug"), calls))
    assert len(calls) == 2


def test_missing_model_alias_and_version_are_answers(registry: ModelRegistry) -> None:
    assert registry.by_alias("champion") is None
    assert registry.by_version("1") is None
    assert registry.model_tags() == {}
    assert registry.versions() == []
    registry.call("create", lambda c: c.create_registered_model("m"))
    assert registry.by_alias("champion") is None
    registry.delete_alias("champion")  # nothing to delete: no error


def test_a_bounded_read_gives_up_on_a_locked_store_and_a_write_waits(tmp_path: Path) -> None:
    """Reads with ``read_seconds`` are abandoned while the store is locked; writes are never abandoned."""
    from chaos.registry.actions import make_tracking_store_unreachable, restore_tracking_store
    from serving import processes

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry("m", tracking_uri=uri, attempts=3, wait_max_seconds=0.01, read_seconds=0.5)
    registry.client.create_registered_model("m")  # the schema exists and the client is built
    locked = make_tracking_store_unreachable(uri, duration=60)
    try:
        for read in (lambda: registry.by_alias("champion"), registry.versions, registry.model_tags):
            with pytest.raises(RegistryUnavailable, match=r"no answer from the registry within 0\.5 s"):
                read()
        assert processes.alive(locked["pid"]), "a read waited until the lock was lifted"
        writing = ThreadPoolExecutor(1).submit(registry.set_model_tag, "k", "v")
        time.sleep(2 * 0.5)  # past the read bound: a bounded write would have failed by now
        assert not writing.done(), "the write was abandoned or failed while the store was locked"
    finally:
        restore_tracking_store(uri)
    writing.result()  # ...and lands once it lifts: a write is never abandoned
    assert registry.model_tag("k") == "v"


@pytest.mark.parametrize(
    ("location", "root", "inside"),
    [
        ("s3://lake/mlflow/artifacts/models/m-1/artifacts", "s3://lake/mlflow/artifacts", True),
        ("s3://lake/mlflow/artifacts/models/m-1/artifacts", "s3://lake/mlflow/artifacts/", True),
        ("s3://lake/mlflow/artifacts-evil/m-1", "s3://lake/mlflow/artifacts", False),  # a prefix, not a folder
        ("s3://lake/mlflow/artifacts/../other/m-1", "s3://lake/mlflow/artifacts", False),
        ("s3://other/mlflow/artifacts/m-1", "s3://lake/mlflow/artifacts", False),
        ("gs://lake/mlflow/artifacts/m-1", "s3://lake/mlflow/artifacts", False),
        ("s3://lake/mlflow/artifacts/m-1", "/srv/artifacts", False),  # remote version, local root
        ("/srv/artifacts/m-1", "s3://lake/mlflow/artifacts", False),  # local version, remote root
    ],
)
def test_a_remote_artifact_root_holds_its_own_prefix_only(location: str, root: str, inside: bool) -> None:
    """Before, every version under a remote root was refused: the production overlay (artifacts on S3)
    could serve no model (found by tests/serving/test_s3_artifacts.py)."""
    assert (outside_root(location, root) is None) == inside
