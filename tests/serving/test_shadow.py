"""The shadow challenger's own process (issue 17): the worker's answers, and its failures stay its own.

Real models from the session's MLflow store, a real child process (``python -m serving.shadow``)
and real signals: a hung child (SIGSTOP) or a dead one (SIGKILL) fails one batch and is
replaced; the child checks the trusted types itself; it exits when its worker is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest

from serving.model import LoadedModel
from serving.processes import wait_until
from serving.registry import ModelRegistry
from serving.shadow import ShadowFailed, ShadowProcess
from tests.serving._estimators import TRUSTED
from tests.serving.conftest import MODEL, REPO_ROOT, ModelStore


@pytest.fixture(scope="module")
def registry(model_store: ModelStore) -> ModelRegistry:
    return ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri, artifact_root=str(model_store.root))


@pytest.fixture
def process() -> Iterator[ShadowProcess]:
    shadow = ShadowProcess(timeout_seconds=60)
    yield shadow
    shadow.close()


def _load(registry: ModelRegistry, store: ModelStore, label: str, **kwargs: Any) -> LoadedModel:
    return LoadedModel.load(registry, registry.version(store.versions[label]), **kwargs)


def _columns(model: LoadedModel, store: ModelStore, rows: int) -> dict[str, list[Any]]:
    return {name: store.frame[name].head(rows).tolist() for name in model.schema.names}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_shadow_process_answers_as_the_worker_would(
    registry: ModelRegistry, model_store: ModelStore, process: ShadowProcess
) -> None:
    for label in ("hgb", "lr"):  # a new version is sent to the same child
        model = _load(registry, model_store, label)
        columns = _columns(model, model_store, 50)
        expected = model.predict(columns)
        got = process.predict(model, columns)
        assert np.array_equal(got.values, expected.values)
        assert expected.scores is not None and got.scores is not None
        assert np.array_equal(got.scores, expected.scores)
        assert process.busy_seconds > 0
        model.close()
    assert process.pid is not None


def test_a_hung_or_dead_child_fails_one_batch_and_is_replaced(registry: ModelRegistry, model_store: ModelStore) -> None:
    process = ShadowProcess(timeout_seconds=2)
    model = _load(registry, model_store, "hgb")
    columns = _columns(model, model_store, 5)
    try:
        process.timeout_seconds = 60  # the first answer includes the child's start-up and model load
        process.predict(model, columns)
        process.timeout_seconds = 2
        hung = process.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        with pytest.raises(ShadowFailed, match="no answer within 2 s"):
            process.predict(model, columns)
        assert _gone(hung) and process.pid is None

        process.timeout_seconds = 60
        assert np.array_equal(process.predict(model, columns).values, model.predict(columns).values)
        dead = process.pid
        assert dead is not None and dead != hung
        os.kill(dead, signal.SIGKILL)
        wait_until(lambda: _gone(dead), 10, "the killed shadow process")
        # Its leader shows as a zombie while its other threads still hold the socket open:
        # the first batch may still go to it and fail; the next one has a new child.
        with contextlib.suppress(ShadowFailed):
            process.predict(model, columns)
        assert np.array_equal(process.predict(model, columns).values, model.predict(columns).values)
        assert process.pid not in (None, hung, dead)
    finally:
        process.close()
        model.close()


def test_the_child_checks_the_trusted_types_itself(
    registry: ModelRegistry, model_store: ModelStore, process: ShadowProcess
) -> None:
    """The worker trusts ``switch``'s own estimator by config; a child not told so refuses it."""
    model = _load(registry, model_store, "switch", extra_trusted=[TRUSTED])
    columns = _columns(model, model_store, 5)
    try:
        with pytest.raises(ShadowFailed, match=f"could not load it: UnsafeArtifact: types nobody reviewed: {TRUSTED}"):
            process.predict(model, columns)
        with pytest.raises(ShadowFailed, match="could not load it"):  # refused once, not sent again
            process.predict(model, columns)
        trusting = ShadowProcess(extra_trusted=[TRUSTED], timeout_seconds=60)
        try:
            assert np.array_equal(trusting.predict(model, columns).values, model.predict(columns).values)
        finally:
            trusting.close()
    finally:
        model.close()


_WORKER = """
import sys
from serving.model import LoadedModel
from serving.registry import ModelRegistry
from serving.shadow import ShadowProcess

registry = ModelRegistry(sys.argv[1], tracking_uri=sys.argv[2], artifact_root=sys.argv[3])
model = LoadedModel.load(registry, registry.version(sys.argv[4]))
process = ShadowProcess(timeout_seconds=60)
process.predict(model, {name: model.example[name].tolist() for name in model.schema.names})
print(process.pid, flush=True)
sys.stdin.read()
"""


def test_the_child_exits_when_its_worker_is_killed(model_store: ModelStore) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, MODEL, model_store.tracking_uri, str(model_store.root)]
        + [model_store.versions["hgb"]],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert psutil.Process(child).ppid() == worker.pid
        worker.kill()
        worker.wait(10)
        wait_until(lambda: not psutil.pid_exists(child) or _gone(child), 30, "the orphaned shadow process to exit")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
