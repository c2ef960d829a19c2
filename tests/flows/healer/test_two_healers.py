"""Two healers in two processes on one incident stream: the lake on a real object store
(SeaweedFS), MLflow's tracking and registry store on a real PostgreSQL.

The incidents and their leases live in the lake; the lease (``checkpoints.leases``, an
exactly-once append) is what keeps the second healer's hands off an incident the first
is repairing, so the remedy is applied once. (Model artifacts are still a local folder:
MLflow's S3 artifact store is issue 18's next step.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from checkpoints.incidents import IncidentLog, State
from flows.config import load_config
from flows.healer.machine import Healer, Observation, make_context
from flows.local.object_store import SeaweedFS
from flows.local.postgres import PostgreSQL
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.pipeline.flow import pipeline_flow
from tests._together import run_together
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config


def _versions(healer: Healer) -> int:
    registry = healer.ctx.registry
    return len(registry.client.search_model_versions(f"name='{registry.model_name}'"))


@pytest.mark.integration
def test_two_healers_on_one_incident_apply_its_remedy_once(
    tmp_path: Path, object_store: SeaweedFS, postgres: PostgreSQL, prefect_harness: None
) -> None:
    """The shared stores of the production topology: MLflow on PostgreSQL, the lake on S3."""
    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    lake = {"root": object_store.new_root("two-healers"), "storage_options": object_store.storage_options}
    policy = {"policy": {"data_quality": ["retrain"]}}
    config = write_config(
        tmp_path, "binary", target, lake=lake, tracking_uri=postgres.database("mlflow"), healing=policy
    )
    assert pipeline_flow(str(config)).outcome == "promoted"
    write_batches(frame.iloc[380:], tmp_path / "landing", parts=1, start=2)  # new data to retrain on

    cfg = load_config(config)
    ctx = make_context(cfg, str(config))
    healer = Healer(ctx, IncidentLog(ctx.lake))
    now = datetime.now(UTC)
    quality = Signal(SignalKind.DATA_QUALITY, Severity.CRITICAL, {"x": 1}, Window(now - timedelta(seconds=5), now))
    healer.record(Observation(now, [quality]))  # one open incident whose policy is a retrain
    before = _versions(healer)

    start_at = time.time() + 10  # both are imported and connected by then: their first ticks race
    argv = [str(config), str(start_at), "40"]
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    outputs = run_together("tests.flows.healer._ticker", [argv, argv], env, timeout=180)
    assert [code for code, _, _ in outputs] == [0, 0], [err[-2000:] for _, _, err in outputs]
    assert all(int(out.split()[-1]) > 1 for _, out, _ in outputs)  # both kept ticking the whole time

    (incident,) = healer.log.incidents()
    assert incident.state == State.RESOLVED, incident.last.detail
    healing = [t for t in incident.transitions if t.state == State.HEALING]
    assert [(t.remedy, t.attempt) for t in healing] == [("retrain", 1)]
    assert _versions(healer) == before + 1  # trained and registered once, not once per healer
    assert healer.ctx.lake.read("bronze").num_rows == len(frame)  # the new batch landed once
