"""Change-aware retraining and resolution by the cause's own evidence, on a real lake and MLflow store.

The stream: four numeric features; batches 0-3 are labeled by ``x1 > 0``, from batch 4 on
(the change point) by ``x2 > 0``. A model trained on a window that straddles the change
learns a mix of both rules; one trained from the change on learns the new rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from checkpoints.incidents import IncidentLog, State, to_report
from flows.config import load_config
from flows.healer.change import ChangePoint, locate
from flows.healer.machine import Healer, Observation, make_context
from flows.healer.remedies import Retrain
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.pipeline.flow import SILVER, locked_schema, pipeline_flow
from flows.pipeline.stages import features, train
from flows.registry import CHAMPION
from serving.registry import PROMOTED_AT_TAG
from tests.flows.pipeline.fixtures import write_config

ROWS = 400
CHANGE = 4


def _batch(index: int, rule: str) -> pd.DataFrame:
    rng = np.random.default_rng(100 + index)
    frame = pd.DataFrame(rng.normal(size=(ROWS, 4)), columns=["x1", "x2", "x3", "x4"])
    frame["label"] = (frame[rule] > 0).astype("int64")
    return frame


def _land(landing: Path, index: int, rule: str) -> None:
    landing.mkdir(parents=True, exist_ok=True)
    _batch(index, rule).to_parquet(landing / f"batch-{index:05d}.parquet", index=False)


def _config(tmp: Path, window: int = 4, **healing: Any) -> Path:
    return write_config(
        tmp,
        "binary",
        "label",
        # A window of 4 batches straddles the change once two post-change batches landed.
        trainer={"params": {"max_iter": 50}, "seed": 3, "window_batches": window},
        healing={"policy": {"concept_drift": ["retrain"]}, **healing},
    )


@pytest.fixture
def world(tmp_path: Path, prefect_harness: None) -> Path:
    """A champion trained on batches 0-3 (the old rule)."""
    for i in range(CHANGE):
        _land(tmp_path / "landing", i, "x1")
    config = _config(tmp_path)
    assert pipeline_flow(str(config)).outcome == "promoted"
    return tmp_path


def _healer(config: Path) -> Healer:
    cfg = load_config(config)
    ctx = make_context(cfg, str(config))
    return Healer(ctx, IncidentLog(ctx.lake))


def _concept_signal(version: str) -> Signal:
    """What the monitor raises on live labels: a time (its window's start), no batch."""
    now = datetime.now(UTC)
    evidence = {"model_version": version, "baseline_error": 0.02, "window_error": 0.5, "inputs_drifted": False}
    return Signal(SignalKind.CONCEPT_DRIFT, Severity.CRITICAL, evidence, Window(now - timedelta(milliseconds=1), now))


def _tick(healer: Healer, *signals: Signal) -> None:
    healer.tick(Observation(started_at=datetime.now(UTC), signals=list(signals)))


def _run_params(healer: Healer, version: str) -> dict[str, str]:
    record = healer.ctx.registry.by_version(version)
    assert record is not None and record.run_id
    mlflow.set_tracking_uri(healer.cfg.tracking_uri)
    return dict(mlflow.get_run(record.run_id).data.params)


def _changed(world: Path) -> tuple[Healer, str]:
    """Two batches of the new rule in the landing zone; a healer, and the pre-drift champion's version."""
    healer = _healer(_config(world))
    before = healer.ctx.registry.by_alias(CHAMPION)
    assert before is not None
    _land(world / "landing", CHANGE, "x2")
    _land(world / "landing", CHANGE + 1, "x2")
    return healer, before.version


def test_the_retrain_trains_from_the_change_point_and_beats_the_window(world: Path) -> None:
    healer, before = _changed(world)
    _tick(healer, _concept_signal(before))

    (incident,) = healer.log.incidents()
    assert incident.cause == "concept_drift" and incident.state == State.VERIFYING, incident.last.detail
    assert incident.evidence["change_point"]["at"] is not None  # recorded when it opened
    after = healer.ctx.registry.by_alias(CHAMPION)
    assert after is not None and after.version != before
    params = _run_params(healer, after.version)
    assert (params["train_first_batch"], params["train_last_batch"]) == (str(CHANGE), str(CHANGE + 1))
    assert after.tags["selfheal.train_batches"] == f"{CHANGE}-{CHANGE + 1}"

    # The window retrain (the newest 4 batches: 2 before the change, 2 after), on the same holdout.
    cfg, lake = healer.cfg, healer.ctx.lake
    silver = lake.read(SILVER).to_pandas()
    schema = locked_schema(lake, cfg)
    assert schema is not None
    window_model, _ = train.fit(train.recent(silver, 4), schema, "label", "binary", cfg.trainer, [])
    post = silver[silver["_batch_id"] >= CHANGE].reset_index(drop=True)
    holdout = train.split_holdout(post, cfg.trainer, None).holdout.copy()
    holdout["label"] = holdout["label"].astype("int64")
    feats = features.feature_columns(schema, "label")
    window_auc = train.score(window_model.model, holdout, feats, "label", "binary")["roc_auc"]
    change_auc = float(after.tags["metric.roc_auc"])
    assert change_auc > 0.95 and change_auc > window_auc + 0.05, (change_auc, window_auc)


def test_batches_that_landed_before_the_alarm_are_found_where_the_old_model_fell(world: Path) -> None:
    healer, before = _changed(world)
    # A scheduled run took them first, on a window of 2 batches: the two after the change.
    assert pipeline_flow(str(_config(world, window=2))).outcome == "promoted"
    scheduled = healer.ctx.registry.by_alias(CHAMPION)
    _tick(healer, _concept_signal(before))  # the alarm's window starts after they landed

    (incident,) = healer.log.incidents()
    point = incident.evidence["change_point"]
    assert point["batch"] == CHANGE and point["how"].startswith(f"v{before}'s roc_auc fell"), point
    assert incident.evidence["quality"]["post_drift"]["value"] < 0.7  # the old model on the batches from the change
    after = healer.ctx.registry.by_alias(CHAMPION)
    assert incident.state == State.VERIFYING and after is not None, incident.last.detail
    assert _run_params(healer, after.version)["train_first_batch"] == str(CHANGE)
    # That model already learned exactly the rows from the change on: not trained again, and it verifies.
    assert after == scheduled and incident.last.detail.startswith("pipeline up-to-date"), incident.last.detail
    healing = next(t for t in incident.transitions if t.state == State.HEALING)
    verified = Retrain().verify(healer.ctx, incident, healing.evidence["plan"], incident.last.ts)
    assert verified.ok, verified.detail


def test_too_few_rows_after_the_change_waits_then_repairs(world: Path) -> None:
    config = _config(world, retrain_min_rows=600)
    healer = _healer(config)
    before = healer.ctx.registry.by_alias(CHAMPION)
    assert before is not None
    _land(world / "landing", CHANGE, "x2")  # 400 labeled rows after the change: fewer than 600
    signal = _concept_signal(before.version)
    for _ in range(3):
        _tick(healer, signal)
    (incident,) = healer.log.incidents()
    assert incident.state == State.HEALING, incident.last.detail
    assert incident.last.detail.startswith("waiting for labeled rows after the change point")
    assert "400 of the 600 needed" in incident.last.detail
    assert [t.detail for t in incident.transitions].count(incident.last.detail) == 1  # said once, not every tick
    assert not incident.failed_remedies and incident.attempts("retrain") == 1
    assert healer.ctx.registry.by_alias(CHAMPION) == before  # nothing trained on 400 rows

    _land(world / "landing", CHANGE + 1, "x2")
    _tick(healer)
    (incident,) = healer.log.incidents()
    assert incident.state == State.VERIFYING, incident.last.detail
    assert incident.attempts("retrain") == 1 and not incident.failed_remedies
    after = healer.ctx.registry.by_alias(CHAMPION)
    assert after is not None and after.version != before.version
    assert _run_params(healer, after.version)["train_first_batch"] == str(CHANGE)


def _repair(world: Path, cause: SignalKind, **healing: Any) -> tuple[Healer, str]:
    """A drift incident repaired by a change-aware retrain, now VERIFYING; returns the pre-drift version."""
    _, before = _changed(world)
    healer = _healer(_config(world, **healing))
    if cause == SignalKind.CONCEPT_DRIFT:
        signal = _concept_signal(before)
    else:
        now = datetime.now(UTC)
        evidence = {"drift_share": 0.5, "drifted_features": ["x2"]}
        signal = Signal(cause, Severity.WARNING, evidence, Window(now - timedelta(milliseconds=1), now))
    _tick(healer, signal)
    (incident,) = healer.log.incidents()
    assert incident.state == State.VERIFYING, incident.last.detail
    return healer, before


def test_a_retrain_that_restores_quality_resolves_with_mttr_and_quality(world: Path) -> None:
    # The loan-stream case: a data_drift incident on a batch-fed model (no live traffic, no drift window).
    healer, _ = _repair(world, SignalKind.DATA_DRIFT, policy={"data_drift": ["retrain", "hold_fallback"]})
    _tick(healer)
    assert healer.log.incidents()[0].state == State.VERIFYING  # no label after the repair yet: no verdict
    _land(world / "landing", CHANGE + 2, "x2")  # labeled rows after the repair, the new rule
    assert pipeline_flow(str(_config(world))).outcome in ("promoted", "rejected")  # the scheduled run
    _tick(healer)
    (incident,) = healer.log.incidents()
    assert incident.state == State.RESOLVED, incident.last.detail
    assert incident.mttr_seconds is not None and incident.mttr_seconds > 0
    assert incident.remedies_tried == ["retrain"]
    quality = incident.last.evidence["quality"]
    assert quality["metric"] == "roc_auc"
    assert quality["pre_drift"]["value"] > 0.95 and quality["pre_drift"]["source"].startswith("holdout of v")
    assert quality["post_drift"]["value"] < 0.7  # the old model on the batches from the change on
    assert quality["post_repair"]["value"] > 0.95 and "landed after it was trained" in quality["post_repair"]["source"]
    assert "pre-drift" in incident.last.detail and "post-repair" in incident.last.detail
    assert to_report(incident)["quality"] == quality  # what `selfheal incidents --json` shows


def test_a_retrain_that_does_not_restore_quality_does_not_resolve(world: Path) -> None:
    healer, _ = _repair(world, SignalKind.CONCEPT_DRIFT, verify_timeout_seconds=3600)
    _land(world / "landing", CHANGE + 2, "x3")  # the world changed again: the repair does not fit it
    assert pipeline_flow(str(_config(world))).outcome in ("promoted", "rejected")
    for _ in range(2):
        _tick(healer)
    (incident,) = healer.log.incidents()
    assert incident.state == State.VERIFYING  # labels after the repair, the signal quiet, quality not back
    # Once its time to verify is up, the remedy has failed, and the record says why.
    impatient = _healer(_config(world, verify_timeout_seconds=0.001))
    _tick(impatient)
    (incident,) = impatient.log.incidents()
    assert incident.state != State.RESOLVED and incident.mttr_seconds is None
    failed = next(t for t in incident.transitions if t.detail.startswith("failed verification"))
    assert "quality not restored" in failed.detail
    assert failed.evidence["quality"]["post_repair"]["value"] < 0.7


def test_batches_from_before_the_old_model_was_promoted_again_are_not_the_changes(world: Path) -> None:
    healer, before = _changed(world)
    assert pipeline_flow(str(_config(world, window=2))).outcome == "promoted"  # learns the rule of batches 4-5
    assert locate(healer.ctx, ChangePoint(), before).batch == CHANGE
    # The old world comes back: the old model is champion again (promoted now); then a third rule arrives.
    healer.ctx.registry.set_alias(CHAMPION, before)
    healer.ctx.registry.set_tag(before, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
    _land(world / "landing", CHANGE + 2, "x3")
    _land(world / "landing", CHANGE + 3, "x3")
    assert pipeline_flow(str(_config(world, window=2))).outcome == "promoted"
    # Batches 4-5 landed before it was promoted again: it was fit for the world then, so they are not this change.
    assert locate(healer.ctx, ChangePoint(), before).batch == CHANGE + 2
