"""A user's own data end to end: land, train, serve, monitor, with real parts only.

Real Delta lake, real MLflow sqlite registry, a real ``python -m serving`` process and a
real monitor pass (issue 16, "Friction"): a dataset with boolean features (one of them
nullable) is served with the user's own ``true``/``false`` values, and a monitor pass run
right after the rows were scored sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from checkpoints import Lake
from flows.cli.serve import server_environment
from flows.config import SelfhealConfig, load_config
from flows.pipeline.flow import pipeline_flow
from serving import processes
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.serving.conftest import REPO_ROOT, LiveServer, http, launch

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _with_booleans(rows: int | None = None) -> tuple[pd.DataFrame, str]:
    """Breast-cancer rows plus two boolean features, ``large`` (predictive) and ``opted_in`` (with nulls)."""
    frame, target = dataset_frame("binary")
    frame = frame[[*frame.columns[:6], target]].copy()
    frame["large"] = frame["mean_area"] > frame["mean_area"].median()
    opted = np.random.default_rng(1).random(len(frame))
    frame["opted_in"] = pd.array(np.where(opted < 0.1, None, opted < 0.55), dtype="boolean")
    return (frame if rows is None else frame.iloc[:rows]), target


def _start_server(cfg: SelfhealConfig, tmp_path: Path) -> LiveServer:
    """``selfheal serve``'s environment for ``cfg``, as a live test server with one worker."""
    port = processes.free_port()
    env = server_environment(cfg, port)
    env.update({"PYTHONPATH": str(REPO_ROOT), "SELFHEAL_POLL_SECONDS": "1", "SELFHEAL_LOG_FLUSH_SECONDS": "0.5"})
    return launch(env, port, tmp_path, Path(cfg.lake.root), workers=1)


@pytest.fixture
def served_booleans(tmp_path: Path) -> Iterator[tuple[SelfhealConfig, LiveServer, pd.DataFrame]]:
    """A model trained by the pipeline on a landed dataset with boolean features, served live."""
    frame, target = _with_booleans()
    write_batches(frame, tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target)
    result = pipeline_flow(str(config))
    assert result.outcome == "promoted", result.message
    cfg = load_config(config)
    server = _start_server(cfg, tmp_path)
    try:
        yield cfg, server, frame.drop(columns=[target])
    finally:
        server.stop()


def _post(server: LiveServer, body: Any) -> Any:
    return http.post(f"{server.url}/predict", content=orjson.dumps(body), headers={"content-type": "application/json"})


def test_boolean_features_stay_boolean_from_landing_to_the_served_model(
    served_booleans: tuple[SelfhealConfig, LiveServer, pd.DataFrame],
) -> None:
    cfg, server, features = served_booleans
    lake = Lake(cfg.lake.root)
    for table in ("bronze", "silver"):
        schema = lake.read(table).schema
        assert str(schema.field("large").type) == "bool", table
        assert str(schema.field("opted_in").type) == "bool", table
    assert lake.read("silver").column("opted_in").null_count > 0  # nulls stay nulls, not a crash

    records = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in features.iloc[:50].to_dict("records")]
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
