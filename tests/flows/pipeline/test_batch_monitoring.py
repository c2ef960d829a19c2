"""Batch monitoring end to end: landed batches are scored by the champion and judged by the monitor.

Real Prefect harness, real Delta lake, real MLflow sqlite registry; no server runs, so
every signal here comes from landed batches alone, judged by the pipeline when they land.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from checkpoints import Lake
from flows.config import load_config
from flows.healer.machine import make_context, observe
from flows.monitor.batch import BATCH_LOG
from flows.monitor.flow import champion_context
from flows.monitor.inbox import INBOX
from flows.pipeline.flow import PipelineResult, pipeline_flow
from flows.registry import CHAMPION, Registry
from tests.flows.pipeline.fixtures import write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROWS = 600
THRESHOLDS = {"performance": {"min_labels": 200}}


def _batch(seed: int, rule: str = "sum", shift: float = 0.0) -> pd.DataFrame:
    """Four normal features; the label is x1 + x2 > 0 ("sum") or x1 - x2 > 0 ("difference")."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=ROWS) for i in range(1, 5)})
    frame["x3"] += shift
    signal = frame.x1 + frame.x2 if rule == "sum" else frame.x1 - frame.x2
    frame["label"] = (signal > 0).astype("int64")
    return frame


def _land(tmp_path: Path, index: int, frame: pd.DataFrame) -> None:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    frame.to_parquet(landing / f"batch-{index:05d}.parquet", index=False)


def _world(tmp_path: Path, **overrides: object) -> Path:
    for i in range(2):
        _land(tmp_path, i, _batch(i))
    config = write_config(tmp_path, "binary", "label", thresholds=THRESHOLDS, **overrides)
    first = pipeline_flow(str(config))
    assert first.outcome == "promoted", first.message
    if load_config(config).landing.monitor:
        assert first.monitored is not None and first.monitored.batches == 0
        assert "no champion yet" in (first.monitored.skipped or "")
    return config


def _kinds(result: PipelineResult) -> set[str]:
    """The signal kinds the run's batch judgement raised."""
    assert result.monitored is not None
    return {line.split(" ", 2)[1].rstrip(":") for line in result.monitored.signals}


def test_each_landed_batch_is_scored_once_by_the_champion_it_landed_under(tmp_path: Path) -> None:
    config = _world(tmp_path)
    cfg = load_config(config)
    before = Registry(cfg.tracking_uri, cfg.model_name).by_alias(CHAMPION)
    assert before is not None
    _land(tmp_path, 2, _batch(2))

    result = pipeline_flow(str(config))

    assert result.monitored is not None and (result.monitored.batches, result.monitored.rows) == (1, ROWS)
    logged = Lake(tmp_path / "lake").read(BATCH_LOG)
    assert logged.num_rows == ROWS
    assert set(logged.column("_model_version").to_pylist()) == {before.version}
    assert set(logged.column("_served_by").to_pylist()) == {"batch"}
    assert logged.column("_label").null_count == 0
    assert pc.mean(pc.equal(logged.column("_prediction"), logged.column("_label"))).as_py() > 0.8
    # A run with nothing new logs nothing again.
    again = pipeline_flow(str(config))
    assert again.monitored is None
    assert Lake(tmp_path / "lake").read(BATCH_LOG).num_rows == ROWS


def test_a_quiet_batch_raises_no_drift_and_a_shifted_one_does_and_the_healer_hears_it(tmp_path: Path) -> None:
    config = _world(tmp_path)
    _land(tmp_path, 2, _batch(2))
    quiet = _kinds(pipeline_flow(str(config)))
    assert not quiet & {"data_drift", "concept_drift", "performance_drop"}, quiet

    since = datetime.now(UTC)
    _land(tmp_path, 3, _batch(3, shift=3.0))
    shifted = pipeline_flow(str(config))

    assert "data_drift" in _kinds(shifted)
    heard = observe(make_context(load_config(config), str(config)), since)
    drift = [s for s in heard.signals if s.kind.value == "data_drift"]
    assert drift and drift[0].source == "batch" and "x3" in drift[0].evidence["drifted_features"]
    assert drift[0].evidence["change_point"]["batch"] == 3  # the healer's retrain starts there


def test_a_concept_change_in_a_labeled_batch_raises_a_quality_signal(tmp_path: Path) -> None:
    config = _world(tmp_path)
    _land(tmp_path, 2, _batch(2, rule="difference"))

    kinds = _kinds(pipeline_flow(str(config)))

    assert "performance_drop" in kinds, kinds
    assert "data_drift" not in kinds  # the inputs did not move


def test_batch_monitoring_can_be_turned_off(tmp_path: Path) -> None:
    config = _world(tmp_path, landing={"path": str(tmp_path / "landing"), "format": "parquet", "monitor": False})
    _land(tmp_path, 2, _batch(2, rule="difference"))

    result = pipeline_flow(str(config))

    assert result.monitored is None
    lake = Lake(tmp_path / "lake")
    assert not lake.exists(BATCH_LOG) and not lake.exists(INBOX)


def _season(seed: int, offset: float, rule: str = "sum") -> pd.DataFrame:
    """A batch from one season: x1 centred on ``offset``; the label is x1 + noise > 0 ("sum") or < 0 ("flip")."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(offset, 1.0, ROWS), "x2": rng.normal(size=ROWS)})
    signal = frame.x1 + rng.normal(0, 1.0, ROWS)
    frame["label"] = ((signal > 0) if rule == "sum" else (signal < 0)).astype("int64")
    return frame


def test_a_batch_from_a_season_the_reference_has_seen_is_judged_per_batch_not_against_the_pooled_holdout(
    tmp_path: Path,
) -> None:
    # Five seasons in the reference: pooled over them, ranking is easy (ROC AUC ~0.9);
    # within one season it is ~0.76. A batch is one season, so it is judged against the
    # champion's per-batch quality and its spread, not the pooled holdout's.
    for i, offset in enumerate((-2.0, -1.0, 0.0, 1.0, 2.0)):
        _land(tmp_path, i, _season(i, offset))
    config = write_config(tmp_path, "binary", "label", thresholds=THRESHOLDS)
    assert pipeline_flow(str(config)).outcome == "promoted"
    cfg = load_config(config)
    baseline = champion_context(cfg.model_name, cfg.tracking_uri)
    assert baseline.metrics["roc_auc"] < 0.85 and "roc_auc" in baseline.spread  # per batch, not ~0.9 pooled

    _land(tmp_path, 5, _season(5, 0.5))
    quiet = _kinds(pipeline_flow(str(config)))
    _land(tmp_path, 6, _season(6, -0.5, rule="flip"))
    flipped = _kinds(pipeline_flow(str(config)))

    assert not quiet & {"data_drift", "concept_drift", "performance_drop"}, quiet
    assert "performance_drop" in flipped, flipped  # a real change still is one
