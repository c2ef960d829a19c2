"""Schema evolution on real parts: a real lake, the real pipeline flow and the real healer, no mocks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from checkpoints.incidents import IncidentLog, State
from checkpoints.schema_mappings import list_mappings
from flows.config import load_config
from flows.healer.machine import Healer, Observation, make_context, probe_quarantine
from flows.pipeline.flow import pipeline_flow
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config

RENAMED = {"mean_radius": "mean_radius_v2"}


@pytest.fixture
def system(tmp_path: Path, prefect_harness: None) -> dict[str, Any]:
    frame, target = dataset_frame("binary")
    frame.insert(0, "row_id", [f"r{i:05d}" for i in range(len(frame))])
    write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target, data__id_columns=["row_id"])
    assert pipeline_flow(str(config)).outcome == "promoted"
    return {"tmp": tmp_path, "frame": frame, "target": target, "config": config}


def _config(system: dict[str, Any], **healing: Any) -> Path:
    return write_config(system["tmp"], "binary", system["target"], data__id_columns=["row_id"], healing=healing)


def _land(system: dict[str, Any], part: pd.DataFrame, index: int) -> tuple[str, datetime]:
    """Write ``part`` as the next landing batch and run the real pipeline on it; (its digest, when)."""
    path = write_batches(part, system["tmp"] / "landing", parts=1, start=index)[0]
    before = datetime.now(UTC)
    pipeline_flow(str(system["config"]))
    return hashlib.sha256(path.read_bytes()).hexdigest(), before


def _heal(config: Path, since: datetime, ticks: int = 4) -> Healer:
    cfg = load_config(config)
    ctx = make_context(cfg, str(config))
    healer = Healer(ctx, IncidentLog(ctx.lake))
    for _ in range(ticks):
        now = datetime.now(UTC)
        healer.tick(Observation(now, probe_quarantine(healer.ctx, since, now)))
        since = now
    return healer


def _bronze_rows(healer: Healer, sha256: str) -> pd.DataFrame:
    bronze = healer.ctx.lake.read("bronze").to_pandas()
    return bronze[bronze["_sha256"] == sha256]


def test_a_renamed_column_is_mapped_landed_once_and_the_mapping_reused(system: dict[str, Any]) -> None:
    frame, config = system["frame"], system["config"]
    renamed = frame.iloc[380:470]
    digest, before = _land(system, renamed.rename(columns=RENAMED), 2)
    healer = _heal(config, before)
    (incident,) = healer.log.incidents()
    assert incident.cause == "data_quality" and incident.state == State.RESOLVED, incident.last.detail
    assert incident.remedies_tried == ["schema_evolution"]

    rows = _bronze_rows(healer, digest).sort_values("row_id")
    assert rows["row_id"].tolist() == renamed["row_id"].tolist()  # every row, exactly once
    assert rows["mean_radius"].tolist() == renamed.sort_values("row_id")["mean_radius"].tolist()  # as sent
    assert "mean_radius_v2" not in rows.columns
    (mapping,) = list_mappings(healer.ctx.lake)
    assert (mapping.source, mapping.target, mapping.approved_by) == ("mean_radius_v2", "mean_radius", "auto")
    assert mapping.evidence["distance_kind"] == "ks" and mapping.evidence["fits"]

    later = frame.iloc[470:].rename(columns=RENAMED)
    digest, before = _land(system, later, 3)  # the pipeline applies the recorded mapping itself
    healer = _heal(config, before, ticks=2)
    assert len(healer.log.incidents()) == 1  # no new incident
    assert _bronze_rows(healer, digest)["mean_radius"].tolist() == frame.iloc[470:]["mean_radius"].tolist()
    ids = healer.ctx.lake.read("bronze", columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(frame)


def test_a_renamed_column_with_other_values_is_not_mapped(system: dict[str, Any]) -> None:
    frame = system["frame"]
    different = frame.iloc[380:470].rename(columns=RENAMED)
    different["mean_radius_v2"] = frame.iloc[380:470]["worst_area"].to_numpy()  # another feature's values
    digest, before = _land(system, different, 2)
    healer = _heal(system["config"], before)
    (incident,) = healer.log.incidents()
    assert incident.state == State.ESCALATED, incident.last.detail
    assert incident.remedies_tried == ["schema_evolution", "quarantine_backfill", "impute"]
    failed = next(t for t in incident.transitions if t.remedy == "schema_evolution" and t.state == State.DIAGNOSED)
    assert "no quarantined batch has a renamed column to map" in failed.detail and "mean_radius" in failed.detail
    assert _bronze_rows(healer, digest).empty and list_mappings(healer.ctx.lake) == []
    assert healer.ctx.lake.quarantined()[0].sha256 == digest  # still quarantined


def test_schema_evolution_approve_holds_the_mapping_until_a_person_approves(system: dict[str, Any]) -> None:
    frame = system["frame"]
    config = _config(system, schema_evolution="approve")
    renamed = frame.iloc[380:470]
    digest, before = _land(system, renamed.rename(columns=RENAMED), 2)
    healer = _heal(config, before, ticks=2)
    (incident,) = healer.log.incidents()
    assert incident.state == State.AWAITING_APPROVAL, incident.last.detail
    assert "{'mean_radius_v2': 'mean_radius'}" in incident.last.detail
    assert _bronze_rows(healer, digest).empty and list_mappings(healer.ctx.lake) == []

    healer.log.approve(incident.id, by="on-call")
    healer = _heal(config, datetime.now(UTC), ticks=3)
    incident = healer.log.get(incident.id)
    assert incident is not None and incident.state == State.RESOLVED, incident.last.detail
    assert _bronze_rows(healer, digest)["mean_radius"].tolist() == renamed["mean_radius"].tolist()
    (mapping,) = list_mappings(healer.ctx.lake)
    assert mapping.approved_by == "on-call"
