"""The one table of metric names (``flows.metrics.COMPUTED``) is what the stages really compute."""

from __future__ import annotations

import numpy as np
import pytest

from flows.config import TrainerConfig
from flows.metrics import COMPUTED, DEFAULT_GATE_METRIC
from flows.monitor.detectors.performance import task_metrics
from flows.pipeline.stages.train import fit
from tests.flows.pipeline.fixtures import dataset_frame


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_holdout_metrics_of_the_table_are_what_the_pipeline_scores(task: str) -> None:
    frame, target = dataset_frame(task)
    schema = {c: "float64" for c in frame.columns if c != target}
    trained, _ = fit(frame, schema, target, task, TrainerConfig(params={"max_iter": 10}), [])
    assert set(trained.metrics) == set(COMPUTED["holdout"][task])
    assert DEFAULT_GATE_METRIC[task] in COMPUTED["holdout"][task]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_feedback_metrics_of_the_table_are_what_the_monitor_and_release_compute(task: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3 if task == "multiclass" else 2, size=400).astype("float64")
    predicted = np.where(rng.random(400) < 0.8, y, 1 - y) if task != "regression" else y + rng.normal(size=400)
    found = set(task_metrics(y, predicted, rng.random(400), task))  # type: ignore[arg-type]
    brier = {"brier"} if task == "binary" else set()  # the release analysis's own, from the score
    assert found | brier == set(COMPUTED["feedback"][task])
    assert DEFAULT_GATE_METRIC[task] in COMPUTED["feedback"][task]
