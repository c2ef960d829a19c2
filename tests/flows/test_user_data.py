"""A user's own data end to end: land, train, serve, monitor, with real parts only.

Real Delta lake, real MLflow sqlite registry, a real ``python -m serving`` process and a
real monitor pass (issue 16, "Friction"): a dataset with boolean features (one of them
nullable) is served with the user's own ``true``/``false`` values, and a monitor pass run
right after the rows were scored sees them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake

from checkpoints import Lake
from checkpoints.metrics import METRICS_TABLE
from flows.cli.serve import server_environment
from flows.config import SelfhealConfig, load_config
from flows.monitor.flow import monitor_pass
from flows.monitor.state import load_state
from flows.pipeline.flow import pipeline_flow
from flows.registry import Registry
from serving import processes
from serving.modelio import mlflow_uris
from serving.processes import wait_until
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.serving.conftest import REPO_ROOT, LiveServer, http, launch


def _with_booleans() -> tuple[pd.DataFrame, str]:
    """Breast-cancer rows plus two boolean features, ``large`` (predictive) and ``opted_in`` (with nulls)."""
    frame, target = dataset_frame("binary")
    frame = frame[[*frame.columns[:6], target]].copy()
    frame["large"] = frame["mean_area"] > frame["mean_area"].median()
    opted = np.random.default_rng(1).random(len(frame))
    frame["opted_in"] = pd.array(np.where(opted < 0.1, None, opted < 0.55), dtype="boolean")
    return frame, target


def _start_server(cfg: SelfhealConfig, tmp_path: Path) -> LiveServer:
    """``selfheal serve``'s environment for ``cfg``, as a live test server with one worker."""
    port = processes.free_port()
    env = server_environment(cfg, port)
    # The server's own defaults otherwise (its inference log flushes every 5 s): what a user gets.
    env.update({"PYTHONPATH": str(REPO_ROOT), "SELFHEAL_POLL_SECONDS": "1"})
    return launch(env, port, tmp_path, Path(cfg.lake.root), workers=1)


@pytest.fixture(scope="module")
def served_booleans(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SelfhealConfig, LiveServer, pd.DataFrame]]:
    """A model trained by the pipeline on a landed dataset with boolean features, served live."""
    tmp_path = tmp_path_factory.mktemp("user-data")
    frame, target = _with_booleans()
    write_batches(frame, tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target)
    result = pipeline_flow(str(config))
    assert result.outcome == "promoted", result.message
    cfg = load_config(config)
    server = _start_server(cfg, tmp_path)
    try:
        yield cfg, server, frame
    finally:
        server.stop()


def _records(features: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as a user's JSON records: ``true``/``false``, and null where a boolean is missing."""
    return [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in features.to_dict("records")]


def _count(lake: Lake, table: str, column: str, ids: pa.Array) -> int:
    """Rows of ``table`` whose ``column`` is one of ``ids``."""
    if not lake.exists(table):
        return 0
    return int(pc.sum(pc.is_in(lake.read(table, columns=[column]).column(column), ids)).as_py() or 0)


def _post(server: LiveServer, body: Any) -> Any:
    return http.post(f"{server.url}/predict", content=orjson.dumps(body), headers={"content-type": "application/json"})


def test_boolean_features_stay_boolean_from_landing_to_the_served_model(
    served_booleans: tuple[SelfhealConfig, LiveServer, pd.DataFrame],
) -> None:
    cfg, server, frame = served_booleans
    features = frame.drop(columns=[cfg.data.target])
    lake = Lake(cfg.lake.root)
    for table in ("bronze", "silver"):
        schema = lake.read(table).schema
        assert str(schema.field("large").type) == "bool", table
        assert str(schema.field("opted_in").type) == "bool", table
    assert lake.read("silver").column("opted_in").null_count > 0  # nulls stay nulls, not a crash

    records = _records(features.iloc[:50])
    assert all(type(r["large"]) is bool for r in records)
    answer = _post(server, records)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 50

    one = dict(records[0], large=True, opted_in=None)  # a null in the nullable boolean column
    assert _post(server, one).status_code == 200, _post(server, one).text

    wrong = _post(server, dict(records[0], large="yes"))
    assert wrong.status_code == 422, wrong.text
    detail = wrong.json()["detail"]
    assert [e["loc"][-1] for e in detail] == ["large"] and "boolean" in detail[0]["msg"]


def test_a_monitor_pass_right_after_a_batch_was_scored_sees_its_rows_and_labels(
    served_booleans: tuple[SelfhealConfig, LiveServer, pd.DataFrame],
) -> None:
    """Default thresholds and the server's default flush: scored rows, then labels, then one pass."""
    cfg, server, frame = served_booleans
    target = cfg.data.target
    answer = _post(server, _records(frame.drop(columns=[target])))
    assert answer.status_code == 200, answer.text
    scored = len(frame)
    scored_at = time.monotonic()
    labels = [{"request_id": i, "label": float(y)} for i, y in zip(answer.json()["ids"], frame[target], strict=True)]
    sent = http.post(
        f"{server.url}/feedback", content=orjson.dumps(labels), headers={"content-type": "application/json"}
    )
    assert sent.status_code == 202, sent.text

    # A user who runs the monitor a few seconds after scoring. The server flushes every 5 s;
    # on a loaded machine the write may take longer, and judging rows still in its buffer is
    # what the lag prevents, so the pass waits for them (the clock still says 12 s at least).
    lake = Lake(cfg.lake.root)
    ids = pa.array(answer.json()["ids"])
    wait_until(lambda: _count(lake, "inference_log", "_request_id", ids) == scored, 60, "the batch in the log")
    wait_until(lambda: _count(lake, "feedback", "request_id", ids) == scored, 60, "its labels in the lake")
    time.sleep(max(0.0, scored_at + 12.0 - time.monotonic()))
    monitored = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"url": server.url})})
    monitor_pass(monitored)

    run = load_state(lake).seq
    rows = lake.read(METRICS_TABLE).filter(pc.equal(pc.field("run"), run)).to_pylist()
    value = {r["name"]: r["value"] for r in rows}
    assert value["rows.inference_log"] >= scored, "the pass did not see the batch's rows"
    assert "drift.share" in value, "no drift test on a batch of min_window_rows or more"
    tested = {json.loads(r["labels"])["feature"] for r in rows if r["name"] == "drift.effect_size"}
    assert {"large", "opted_in"} <= tested  # the boolean features are compared with silver's
    assert any(name.startswith("performance.") for name in value), "the batch's labels were not judged"


def test_a_silver_that_stores_booleans_as_floats_keeps_landing_and_its_model_takes_booleans(
    prefect_harness: None, tmp_path: Path
) -> None:
    """A lake from before booleans were kept: its silver holds 0/1 floats for them."""
    frame, target = _with_booleans()
    write_batches(frame.iloc[:300], tmp_path / "landing", parts=1)
    config = write_config(tmp_path, "binary", target)
    assert pipeline_flow(str(config)).outcome == "promoted"
    lake = Lake(tmp_path / "lake")
    old = lake.read("silver")
    for name in ("large", "opted_in"):  # what the features stage used to write
        old = old.set_column(old.schema.get_field_index(name), name, pc.cast(old.column(name), pa.float64()))
    write_deltalake(lake.uri("silver"), old, mode="overwrite", schema_mode="overwrite")

    write_batches(frame.iloc[300:], tmp_path / "landing", parts=1, start=1)
    result = pipeline_flow(str(config))

    assert result.outcome in ("promoted", "rejected"), result.message
    silver = lake.read("silver")
    assert silver.num_rows == len(frame) and silver.schema.field("large").type == pa.float64()
    cfg = load_config(config)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    latest = max(int(v.version) for v in registry.client.search_model_versions(f"name='{cfg.model_name}'"))
    assert latest == 2  # trained on the mixed silver
    with mlflow_uris(cfg.tracking_uri):  # models:/ resolves through the registry URI too
        info = mlflow.models.get_model_info(f"models:/{cfg.model_name}/2")
    inputs = {c.name: c.type.name for c in info.signature.inputs}
    assert inputs["large"] == "boolean" and inputs["opted_in"] == "boolean"
