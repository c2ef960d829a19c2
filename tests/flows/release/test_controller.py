"""The release controller: canary steps, and the pipeline starting a release instead of promoting."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import SelfhealConfig
from flows.release.controller import _next_share
from serving.release import ReleaseState


def test_the_canary_moves_one_step_per_step_seconds() -> None:
    cfg = SelfhealConfig(release={"steps": [0.1, 0.25, 0.5], "step_seconds": 30})  # type: ignore[arg-type]
    state = ReleaseState("r", "canary", "2", "1", 0.1, started_at=0.0, step_started_at=0.0, max_share=0.1)
    assert _next_share(cfg, state, 29.0) is None
    moved = _next_share(cfg, state, 30.0)
    assert moved is not None and (moved.step, moved.share, moved.max_share) == (1, 0.25, 0.25)
    last = ReleaseState("r", "canary", "2", "1", 0.5, step=2, step_started_at=0.0)
    assert _next_share(cfg, last, 999.0) is None


@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_releases_a_new_model_as_canary_instead_of_promoting_it(tmp_path: Path) -> None:
    from flows.config import load_config
    from flows.pipeline.flow import pipeline_flow
    from flows.registry import CHALLENGER, CHAMPION, Registry
    from flows.release.controller import read_state
    from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config

    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:400], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target, promote__target="canary", release__steps=[0.2, 0.5])
    first = pipeline_flow(str(config))
    assert first.outcome == "promoted"  # nothing to compare with: the first model is promoted directly
    write_batches(frame.iloc[400:], tmp_path / "landing", parts=2, start=2)
    second = pipeline_flow(str(config))
    assert second.outcome == "released", second.message
    cfg = load_config(config)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    champion, challenger = registry.by_alias(CHAMPION), registry.by_alias(CHALLENGER)
    assert champion is not None and champion.version == first.champion == second.champion
    assert challenger is not None and challenger.version != champion.version
    state = read_state(registry)
    assert state is not None and (state.mode, state.challenger, state.share) == ("canary", challenger.version, 0.2)
    assert pipeline_flow(str(config)).outcome in ("up-to-date", "released")  # no new data: no second release
    again = read_state(registry)
    assert again is not None and again.release_id == state.release_id


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
def test_the_watcher_outlives_a_lake_it_cannot_reach_mid_release(
    capsys: pytest.CaptureFixture[str], dead_lake: str
) -> None:
    """A measurement due while the lake's object store is down is waited out, as a registry outage is."""
    import time

    from mlflow import MlflowClient

    from flows.cli import main
    from flows.config import load_config
    from flows.registry import Registry
    from flows.release.controller import read_state, write_state

    cfg = load_config()
    MlflowClient(cfg.tracking_uri, cfg.tracking_uri).create_registered_model(cfg.model_name)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    hour_ago = time.time() - 3600  # a measurement is due: the analysis reads the lake
    write_state(registry, ReleaseState("r1", "shadow", "2", "1", 1.0, started_at=hour_ago, step_started_at=hour_ago))

    assert main(["release", "watch", "--interval", "0.1", "--max-looks", "2"]) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("selfheal release watch: ")]
    assert len(failed) == 2, err  # on 8dd8f8c the first failed look ended the controller
    assert all(dead_lake in line and "looking again in 0.1 s" in line for line in failed)
    state = read_state(registry)
    assert state is not None and (state.status, state.measurements) == ("running", 0)  # resumed by the next look


def test_the_watcher_outlives_a_locked_tracking_store(tmp_path: Path) -> None:
    """A store outage longer than the registry's retries is waited out, not the end of the controller."""
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from chaos.registry.actions import make_tracking_store_unreachable, restore_tracking_store
    from flows.config import load_config
    from serving.processes import wait_until
    from tests.flows.pipeline.fixtures import write_config

    config = write_config(tmp_path, "binary", "label")
    cfg = load_config(config)
    MlflowClient(cfg.tracking_uri, cfg.tracking_uri).create_registered_model(cfg.model_name)
    err = tmp_path / "watch.err"
    locked = make_tracking_store_unreachable(cfg.tracking_uri, duration=120)
    with err.open("w") as sink:
        watch = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "-c", str(config), "release", "watch", "--interval", "0.5"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_until(lambda: "looking again" in err.read_text() or watch.poll() is not None, 90, "a failed look")
        assert watch.poll() is None, err.read_text()[-2000:]  # on bd4b631 the outage ended the controller
        restore_tracking_store(cfg.tracking_uri)
        time.sleep(3)  # several looks at the store that answers again
        assert watch.poll() is None, err.read_text()[-2000:]
    finally:
        restore_tracking_store(cfg.tracking_uri)
        watch.terminate()
        watch.wait(30)
    assert locked["pid"] and watch.returncode is not None


def test_a_rollback_whose_incident_the_lake_cut_off_is_recorded_whole_by_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traffic goes back at once; the ``bad_release`` incident, cut off after its first row, is finished later."""
    from mlflow import MlflowClient

    from checkpoints import Lake
    from checkpoints.exceptions import LakeUnreachable
    from checkpoints.incidents import IncidentLog, State
    from flows.registry import CHALLENGER, CHAMPION, Registry
    from flows.release import controller
    from flows.release.analysis import Measurement

    cfg = SelfhealConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", lake={"root": str(tmp_path / "lake")})  # type: ignore[arg-type]
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    client.create_registered_model(cfg.model_name)
    for _ in range(2):
        client.create_model_version(cfg.model_name, source=str(tmp_path))
    registry, lake = Registry(cfg.tracking_uri, cfg.model_name), Lake(cfg.lake.root)
    registry.set_alias(CHALLENGER, "2")
    running = ReleaseState("r1", "canary", "2", "1", 0.1)
    controller.write_state(registry, running)
    failed = [Measurement("error_rate", "failed", 0.4, 0.0, 0.4, 200)]

    real_advance = IncidentLog.advance

    def store_down(*args: object, **kwargs: object) -> None:
        raise LakeUnreachable("lake s3://lake/x: append to incidents: the store went away")

    monkeypatch.setattr(IncidentLog, "advance", store_down)
    with pytest.raises(LakeUnreachable):
        controller._act(cfg, registry, lake, running, "failed", failed)
    owed = controller.read_state(registry)
    assert owed is not None and owed.status == "rolled_back" and owed.share == 0.0
    assert registry.by_alias(CHALLENGER) is None  # traffic went back before the lake failed
    assert owed.owed_incident is not None and owed.owed_incident["failed"][0]["metric"] == "error_rate"
    [cut] = IncidentLog(lake).incidents()
    assert cut.state is State.DETECTED and cut.id == owed.owed_incident["id"]

    monkeypatch.setattr(IncidentLog, "advance", real_advance)
    result = controller.analysis_step.fn(cfg)
    assert result.action == "rolled_back" and result.state is not None and result.state.owed_incident is None
    [whole] = IncidentLog(lake).incidents()
    assert whole.id == cut.id and whole.state is State.RESOLVED  # the same incident, not a second one
    assert whole.detected_at == cut.detected_at and whole.evidence["failed"][0]["metric"] == "error_rate"
    settled = controller.read_state(registry)
    assert settled is not None and settled.owed_incident is None and settled.status == "rolled_back"
    assert controller.analysis_step.fn(cfg).action == "idle"
    assert len(IncidentLog(lake).incidents()) == 1

    # Owed again, then a new release starts before any look: the start records the incident first.
    registry.set_alias(CHAMPION, "1")
    monkeypatch.setattr(IncidentLog, "advance", store_down)
    with pytest.raises(LakeUnreachable):
        controller._act(cfg, registry, lake, ReleaseState("r2", "canary", "2", "1", 0.1), "failed", failed)
    monkeypatch.setattr(IncidentLog, "advance", real_advance)
    client.create_model_version(cfg.model_name, source=str(tmp_path))
    started = controller.start_release(cfg, "3", "canary")
    assert started.release_id != "r2" and started.owed_incident is None
    second = [i for i in IncidentLog(lake).incidents() if i.evidence.get("release_id") == "r2"]
    assert [i.state for i in second] == [State.RESOLVED]
