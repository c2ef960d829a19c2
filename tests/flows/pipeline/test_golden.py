"""A promotion freezes the new champion's golden set: holdout records and the registered artifact's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import Lake
from checkpoints.golden import compare, golden_set
from flows.config import load_config
from flows.pipeline.flow import pipeline_flow
from flows.registry import CHAMPION, Registry
from serving.model import LoadedModel
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config


def test_a_promotion_freezes_a_stratified_golden_set_from_the_registered_artifact(
    tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target, golden__rows=40, golden__enabled=True)
    cfg = load_config(config)
    # When the alias moves, the version's golden set is already there: a champion never lacks one
    # (a model file replaced between the two would otherwise be frozen as the truth).
    frozen_when_promoted = []
    promote = Registry.promote

    def promote_and_look(registry: Registry, version: str) -> object:
        ref = registry.version(version)
        frozen_when_promoted.append(len(golden_set(Lake(cfg.lake.root), version, ref.run_id or "")))
        return promote(registry, version)

    monkeypatch.setattr(Registry, "promote", promote_and_look)
    assert pipeline_flow(str(config)).outcome == "promoted"
    assert frozen_when_promoted == [40]
    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    rows = golden_set(Lake(cfg.lake.root), champion.version, champion.run_id or "")
    assert len(rows) == 40 and {r.expected["label"] for r in rows} == {0, 1}  # both labels of the holdout
    assert target not in rows[0].record
    model = LoadedModel.load(registry, champion, extra_trusted=cfg.trainer.trusted_types)
    try:
        columns, _, _ = model.schema.validate([r.record for r in rows], max_rows=len(rows))
        answer = model.predict(columns)
    finally:
        model.close()
    assert compare(rows, answer.labels.tolist(), answer.scores.tolist(), 0.0) == []  # type: ignore[union-attr]
