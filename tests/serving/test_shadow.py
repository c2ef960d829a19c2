"""The shadow challenger's own process (issue 17): it logs the worker's answers, and its failures stay its own.

Real models from the session's MLflow store, a real child process (``python -m serving.shadow``)
writing a real Delta table, and real signals: a hung child (SIGSTOP) or a dead one (SIGKILL)
fails one batch and is replaced; the child checks the trusted types itself; it exits when its
worker is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from checkpoints import Lake
from serving.inference_log import LogTarget
from serving.model import LoadedModel
from serving.processes import wait_until
from serving.registry import ModelRegistry
from serving.release import SHADOW_TABLE, MirroredBatch
from serving.shadow import ShadowFailed, ShadowProcess
from tests.serving._estimators import TRUSTED
from tests.serving.conftest import MODEL, REPO_ROOT, ModelStore


@pytest.fixture(scope="module")
def registry(model_store: ModelStore) -> ModelRegistry:
    return ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri, artifact_root=str(model_store.root))


@pytest.fixture
def process() -> Iterator[ShadowProcess]:  # logs nothing: it predicts and counts
    shadow = ShadowProcess(timeout_seconds=60)
    yield shadow
    shadow.close()


def _load(registry: ModelRegistry, store: ModelStore, label: str, **kwargs: Any) -> LoadedModel:
    return LoadedModel.load(registry, registry.version(store.versions[label]), **kwargs)


def _columns(model: LoadedModel, store: ModelStore, rows: int) -> dict[str, list[Any]]:
    return {name: store.frame[name].head(rows).tolist() for name in model.schema.names}


def _batch(columns: dict[str, list[Any]], prefix: str, parts: int = 1) -> MirroredBatch:
    """The rows of ``columns`` as ``parts`` mirrored requests, ids ``<prefix>-<row>``."""
    rows = len(next(iter(columns.values())))
    cuts = [rows * k // parts for k in range(parts + 1)]
    now = time.time_ns() // 1000
    packed = [
        MirroredBatch.pack(
            {name: values[a:b] for name, values in columns.items()}, [f"{prefix}-{i}" for i in range(a, b)], now
        )
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    return MirroredBatch(rows, packed)


def _mirrored(process: ShadowProcess, model: LoadedModel, columns: dict[str, list[Any]]) -> int:
    """Rows the challenger predicted (an error fails the test)."""
    answer = process.mirror(model, _batch(columns, "r"))
    assert answer.error is None
    return answer.rows


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_shadow_process_logs_what_the_worker_would_predict(
    registry: ModelRegistry, model_store: ModelStore, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    log = LogTarget(lake.root, str(tmp_path / "dead-letter"), flush_seconds=0.2)
    process = ShadowProcess(log=log, timeout_seconds=60)
    expected: dict[str, tuple[float, float | None]] = {}
    child = None
    try:
        for label in ("hgb", "lr"):  # a new version is sent to the same child
            model = _load(registry, model_store, label)
            columns = _columns(model, model_store, 50)
            prediction = model.predict(columns)
            assert prediction.scores is not None
            batch = _batch(columns, label, parts=3)
            answer = process.mirror(model, batch)
            assert (answer.rows, answer.error) == (50, None)
            assert answer.cpu_seconds > 0
            ids = [i for item in batch.items() for i in item.row_ids]
            expected |= dict(
                zip(ids, zip(prediction.values.tolist(), prediction.scores.tolist(), strict=True), strict=True)
            )
            model.close()
            if label == "hgb":  # a stop sent to the whole process tree: the child keeps its queued rows
                child = process.pid
                assert child is not None
                os.kill(child, signal.SIGTERM)
        assert process.pid == child  # still the same child: it ignored the SIGTERM
        # A challenger failing valid rows (logistic regression refuses NaN): they are logged as its errors.
        nan = dict(columns) | {"mean_radius": [float("nan")] * 50}
        failed = process.mirror(model, _batch(nan, "nan"))
        assert failed.rows == 50 and failed.error is not None and "NaN" in failed.error
        assert process.pid is not None
    finally:
        process.close()  # the child writes what it queued before it exits
    logged = lake.read(SHADOW_TABLE).to_pylist()
    assert len(logged) == 150
    ok = {r["_request_id"]: (r["_prediction"], r["_score"]) for r in logged if r["_served_by"] == "primary"}
    assert ok == expected
    errors = [r for r in logged if r["_served_by"] == "error"]
    assert len(errors) == 50 and all(r["_prediction"] is None and r["_request_id"].startswith("nan-") for r in errors)
    assert {r["_variant"] for r in logged} == {"challenger"}


def test_a_hung_or_dead_child_fails_one_batch_and_is_replaced(registry: ModelRegistry, model_store: ModelStore) -> None:
    process = ShadowProcess(timeout_seconds=2)
    model = _load(registry, model_store, "hgb")
    columns = _columns(model, model_store, 5)
    try:
        process.timeout_seconds = 60  # the first answer includes the child's start-up and model load
        _mirrored(process, model, columns)
        process.timeout_seconds = 2
        hung = process.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        with pytest.raises(ShadowFailed, match="no answer within 2 s"):
            _mirrored(process, model, columns)
        assert _gone(hung) and process.pid is None

        process.timeout_seconds = 60
        assert _mirrored(process, model, columns) == 5
        dead = process.pid
        assert dead is not None and dead != hung
        os.kill(dead, signal.SIGKILL)
        wait_until(lambda: _gone(dead), 10, "the killed shadow process")
        # Its leader shows as a zombie while its other threads still hold the socket open:
        # the first batch may still go to it and fail; the next one has a new child.
        with contextlib.suppress(ShadowFailed):
            _mirrored(process, model, columns)
        assert _mirrored(process, model, columns) == 5
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
            _mirrored(process, model, columns)
        with pytest.raises(ShadowFailed, match="could not load it"):  # refused once, not sent again
            _mirrored(process, model, columns)
        trusting = ShadowProcess(extra_trusted=[TRUSTED], timeout_seconds=60)
        try:
            assert _mirrored(trusting, model, columns) == 5
        finally:
            trusting.close()
    finally:
        model.close()


_WORKER = """
import sys
from serving.model import LoadedModel
from serving.registry import ModelRegistry
from serving.release import MirroredBatch
from serving.shadow import ShadowProcess

registry = ModelRegistry(sys.argv[1], tracking_uri=sys.argv[2], artifact_root=sys.argv[3])
model = LoadedModel.load(registry, registry.version(sys.argv[4]))
process = ShadowProcess(timeout_seconds=60)
columns = {name: model.example[name].tolist() for name in model.schema.names}
process.mirror(model, MirroredBatch(len(model.example), [MirroredBatch.pack(columns, ["r"] * len(model.example), 0)]))
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
