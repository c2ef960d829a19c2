"""The healer on real parts: a trained champion in a real MLflow store, a real lake, real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkpoints.exceptions import LakeUnreachable
from checkpoints.incidents import IncidentLog, State
from checkpoints.leases import Lease, claim, take
from flows.config import load_config
from flows.healer.machine import Healer, Observation, make_context
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.pipeline.flow import pipeline_flow
from flows.registry import CHAMPION
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.flows.pipeline.slow_fit import SLOW_TRAINER, kill_9_mid_fit, start_cli


def _signal(kind: SignalKind, severity: Severity = Severity.CRITICAL, **evidence: Any) -> Signal:
    now = datetime.now(UTC)
    return Signal(kind, severity, evidence or {"x": 1}, Window(now - timedelta(seconds=5), now))


def _observe(*signals: Signal) -> Observation:
    return Observation(started_at=datetime.now(UTC), signals=list(signals))


# -- a champion to heal ------------------------------------------------------------------------
@pytest.fixture
def system(tmp_path: Path, prefect_harness: None) -> dict[str, Any]:
    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target)
    assert pipeline_flow(str(config)).outcome == "promoted"
    return {"tmp": tmp_path, "frame": frame, "target": target, "config": config}


def _healer(config: Path) -> Healer:
    cfg = load_config(config)
    ctx = make_context(cfg, str(config))
    return Healer(ctx, IncidentLog(ctx.lake))


def _tick_on_quarantine(healer: Healer, since: datetime, ticks: int = 3) -> None:
    """A few healer ticks, each observing what the quarantine probe saw since the last."""
    from flows.healer.machine import probe_quarantine

    for _ in range(ticks):
        now = datetime.now(UTC)
        healer.tick(Observation(now, probe_quarantine(healer.ctx, since, now)))
        since = now


def _rewrite(system: dict[str, Any], **overrides: Any) -> Path:
    return write_config(system["tmp"], "binary", system["target"], **overrides)


def test_healing_disabled_keeps_faults_open(system: dict[str, Any]) -> None:
    config = _rewrite(system, healing={"enabled": False})
    healer = _healer(config)
    for _ in range(3):
        healer.tick(_observe(_signal(SignalKind.DATA_DRIFT, features=["mean_radius"])))
    incidents = healer.log.incidents()
    assert len(incidents) == 1  # the same cause joins the open incident
    assert incidents[0].cause == "data_drift" and incidents[0].state == State.DIAGNOSED
    assert not any(t.state == State.HEALING for t in incidents[0].transitions)


@pytest.mark.parametrize("policy", ["observe", "repair"])
def test_drift_that_does_not_reach_the_model_is_observed_not_repaired(system: dict[str, Any], policy: str) -> None:
    config = _rewrite(system, healing={"enabled": False, "unfelt_drift": policy})
    healer = _healer(config)
    unfelt = {"prediction_drift": False, "estimated_drop": False, "reaches_model": False}
    healer.tick(_observe(_signal(SignalKind.DATA_DRIFT, Severity.WARNING, features=["x"], impact=unfelt)))
    assert len(healer.log.incidents()) == (1 if policy == "repair" else 0)

    felt = {**unfelt, "prediction_drift": True, "reaches_model": True}
    healer.tick(_observe(_signal(SignalKind.DATA_DRIFT, features=["x"], impact=felt)))
    assert [i.cause for i in healer.log.incidents()] == ["data_drift"]


@pytest.mark.parametrize("source", ["monitor", "batch"])
def test_a_quality_drop_on_a_landed_batch_is_not_blamed_on_the_fresh_deploy(
    system: dict[str, Any], source: str
) -> None:
    config = _rewrite(system, healing={"enabled": False})
    healer = _healer(config)  # the champion was promoted a moment ago
    drop = _signal(SignalKind.PERFORMANCE_DROP, metric="roc_auc", value=0.6, baseline=0.95)
    healer.tick(_observe(replace(drop, source=source)))
    causes = [i.cause for i in healer.log.incidents()]
    assert causes == (["bad_deploy"] if source == "monitor" else ["concept_drift"]), causes


def test_a_lake_outage_does_not_count_against_a_repairs_verification(system: dict[str, Any]) -> None:
    """The healer could not look while the lake was down: that time is not the remedy's."""
    config = _rewrite(
        system, healing={"policy": {"data_drift": ["hold_fallback", "rollback"]}, "verify_timeout_seconds": 0.5}
    )
    healer = _healer(config)
    drift = _signal(SignalKind.DATA_DRIFT, features=["mean_radius"])
    healer.tick(_observe(drift))
    (incident,) = healer.log.incidents()
    assert incident.state == State.VERIFYING
    applied_at = datetime.fromisoformat(incident.last.evidence["applied_at"])
    time.sleep(0.7)  # past the verification timeout, all of it with the lake down
    healer.blind[applied_at] = datetime.now(UTC)
    healer.tick(_observe(drift))
    (incident,) = healer.log.incidents()
    assert incident.state == State.VERIFYING, incident.last.detail
    healer.blind.clear()  # the same wait with the lake up: the remedy had its time
    healer.tick(_observe(drift))
    (incident,) = healer.log.incidents()
    assert any(t.detail.startswith("failed verification") for t in incident.transitions)


def test_a_remedy_the_lake_fails_waits_then_counts_as_failed_once_it_outlasts_the_timeout(
    system: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lake's store failing under a remedy is not the remedy failing, until it has lasted verify_timeout_seconds."""
    import flows.healer.machine as machine

    policy = {"data_drift": ["rollback", "hold_fallback"]}
    config = _rewrite(system, healing={"policy": policy, "max_attempts": 1, "verify_timeout_seconds": 0.5})
    healer = _healer(config)
    real = machine.get_remedy

    class CutOff(type(real("rollback"))):  # type: ignore[misc]
        def apply(self, *args: Any, **kwargs: Any) -> Any:
            raise LakeUnreachable("lake s3://lake/x: append failed on the object store: 403 Forbidden")

    monkeypatch.setattr(machine, "get_remedy", lambda name: CutOff() if name == "rollback" else real(name))
    drift = _signal(SignalKind.DATA_DRIFT, features=["mean_radius"])
    for _ in range(2):  # within the timeout: the incident waits, the attempt is not used up
        healer.tick(_observe(drift))
        (incident,) = healer.log.incidents()
        assert (incident.state, incident.last.remedy, incident.failed_remedies) == (State.HEALING, "rollback", [])
        assert incident.last.detail.startswith("waiting for the lake's store")
    time.sleep(0.6)  # the lake kept failing it past the timeout: the attempt failed, the next remedy runs
    healer.tick(_observe(drift))
    (incident,) = healer.log.incidents()
    assert incident.failed_remedies == ["rollback"], [t.detail for t in incident.transitions]
    assert any(t.detail.startswith("failed to apply: the lake failed it for") for t in incident.transitions)
    assert (incident.state, incident.last.remedy) == (State.VERIFYING, "hold_fallback")


def test_failed_verification_moves_on_then_escalates(system: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _rewrite(
        system,
        healing={"policy": {"data_drift": ["hold_fallback", "rollback"]}, "verify_timeout_seconds": 0.5},
    )
    healer = _healer(config)
    champion = healer.ctx.registry.by_alias(CHAMPION)
    drift = _signal(SignalKind.DATA_DRIFT, features=["mean_radius"])
    for _ in range(6):
        healer.tick(_observe(drift))  # the drift never goes quiet: no remedy can verify
        time.sleep(0.3)
    (incident,) = healer.log.incidents()
    states = [(t.state, t.remedy) for t in incident.transitions]
    assert (State.HEALING, "hold_fallback") in states and (State.HEALING, "rollback") in states
    assert incident.state == State.ESCALATED
    assert "remedies exhausted (hold_fallback, rollback)" in incident.last.detail
    failures = [t.detail for t in incident.transitions if t.detail.startswith("failed")]
    assert failures[0].startswith("failed verification") and "no previous version" in failures[1]
    # The safest state is kept: the champion did not move; the drift opens no new incident (no loop).
    assert healer.ctx.registry.by_alias(CHAMPION) == champion
    assert len(healer.log.incidents()) == 1

    # Once someone acknowledges the escalation, the cause is healed again at once.
    from flows.cli import main

    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    assert main(["incidents", "ack", "inc-nope"]) == 1
    assert main(["incidents", "ack", incident.id, "--by", "on-call", "--note", "checking the feed"]) == 0
    assert main(["incidents", "ack", incident.id]) == 0  # already acknowledged: said, not an error
    (acknowledged,) = healer.log.incidents()
    assert acknowledged.state == State.ESCALATED and acknowledged.acknowledged
    assert acknowledged.last.detail == "acknowledged by on-call: checking the feed"
    assert acknowledged.resolved_at == incident.resolved_at  # closed when it escalated, not when acknowledged
    healer.tick(_observe(drift))
    assert len(healer.log.incidents()) == 2 and healer.log.open_for("data_drift") is not None
    with pytest.raises(ValueError, match="only an ESCALATED incident"):
        healer.log.acknowledge(healer.log.open_for("data_drift"), "on-call")  # type: ignore[arg-type]


def test_budget_exhausted_defers_retrain_and_records_it(system: dict[str, Any]) -> None:
    config = _rewrite(system, healing={"policy": {"data_drift": ["retrain"]}, "budget_per_window": 5})
    healer = _healer(config)
    for _ in range(3):
        healer.tick(_observe(_signal(SignalKind.DATA_DRIFT)))
    (incident,) = healer.log.incidents()
    deferrals = [t for t in incident.transitions if t.detail.startswith("deferred retrain")]
    assert len(deferrals) == 1  # recorded once, not on every tick
    assert "cost 10 exceeds the 5 left of 5 per 3600 s" in deferrals[0].detail
    assert incident.state == State.DIAGNOSED and incident.remedies_tried == []

    downgrading = _rewrite(
        system, healing={"policy": {"concept_drift": ["retrain", "rollback"]}, "budget_per_window": 5}
    )
    healer = _healer(downgrading)
    healer.tick(_observe(_signal(SignalKind.CONCEPT_DRIFT)))
    concept = healer.log.open_for("concept_drift") or healer.log.incidents()[-1]
    downgrade = [t for t in concept.transitions if t.state == State.HEALING]
    assert downgrade[0].remedy == "rollback"
    assert downgrade[0].detail.startswith("deferred retrain") and downgrade[0].detail.endswith("downgraded to rollback")
    assert "retrain" not in concept.remedies_tried and "rollback" in concept.remedies_tried


def test_quarantined_batch_backfilled_from_fallback_and_verified(system: dict[str, Any]) -> None:
    tmp, frame = system["tmp"], system["frame"]
    fallback = tmp / "fallback"
    clean = write_batches(frame.iloc[380:], fallback, parts=1, start=2)[0]
    broken = tmp / "landing" / clean.name
    broken.write_bytes(clean.read_bytes()[:400])
    landing = {"path": str(tmp / "landing"), "format": "parquet", "fallback": str(fallback), "settle_seconds": 0}
    config = _rewrite(system, landing=landing)  # settle 0: the cut file is taken at once, footer or not
    before = datetime.now(UTC)
    assert pipeline_flow(str(config)).landing.quarantined  # the real pipeline quarantines it
    healer = _healer(config)
    _tick_on_quarantine(healer, since=before)
    (incident,) = healer.log.incidents()
    assert incident.cause == "data_quality" and incident.state == State.RESOLVED, incident.last.detail
    assert incident.remedies_tried == ["schema_evolution", "quarantine_backfill"] and incident.mttr_seconds is not None
    assert healer.ctx.lake.read("bronze").num_rows == len(frame)


def test_a_nested_column_no_remedy_can_repair_is_escalated_naming_the_file(system: dict[str, Any]) -> None:
    tmp, frame = system["tmp"], system["frame"]
    nested = frame.iloc[380:].copy()
    nested["mean_radius"] = [{"value": v, "unit": "mm"} for v in nested["mean_radius"]]
    nested.to_parquet(tmp / "landing" / "batch-00002.parquet", index=False)
    before = datetime.now(UTC)
    result = pipeline_flow(str(system["config"]))  # base: TypeError, the run fails, nothing quarantined
    assert [name for name, _ in result.landing.quarantined] == ["batch-00002.parquet"]
    healer = _healer(system["config"])
    _tick_on_quarantine(healer, since=before, ticks=4)
    (incident,) = healer.log.incidents()
    assert incident.cause == "data_quality" and incident.state == State.ESCALATED, incident.last.detail
    assert incident.remedies_tried == ["schema_evolution", "quarantine_backfill", "impute"]
    (named,) = incident.evidence["quarantined"]
    assert named["source"].endswith("batch-00002.parquet") and "mean_radius: dtype" in named["reason"]


def test_batch_with_nulls_imputed_from_last_good_values_keeps_the_distribution(system: dict[str, Any]) -> None:
    import numpy as np
    from scipy.stats import ks_2samp

    tmp, frame = system["tmp"], system["frame"]
    holey = frame.iloc[380:].copy()
    hit = np.random.default_rng(5).random(len(holey)) < 0.6
    holey.loc[hit, "mean_radius"] = np.nan
    write_batches(holey, tmp / "landing", parts=1, start=2)
    config = _rewrite(system, healing={"policy": {"data_quality": ["impute"]}})
    before = datetime.now(UTC)
    assert pipeline_flow(str(config)).landing.quarantined  # 60% nulls > max_null_fraction
    healer = _healer(config)
    _tick_on_quarantine(healer, since=before)
    (incident,) = healer.log.incidents()
    assert incident.state == State.RESOLVED and incident.remedies_tried == ["impute"], incident.last.detail

    bronze = healer.ctx.lake.read("bronze").to_pandas()
    assert len(bronze) == len(frame)  # nothing lost: every row of the batch landed
    imputed = bronze[bronze["_source_file"].str.contains("quarantine")]
    assert len(imputed) == len(holey) and imputed["mean_radius"].notna().all()
    filled = imputed["mean_radius"].to_numpy()[hit]
    last_good = frame.iloc[:380]["mean_radius"].to_numpy()
    assert set(filled) <= set(last_good)  # drawn from observed values, nothing invented
    # The filled values follow the last-good distribution; a median fill would be one value.
    assert ks_2samp(filled, last_good).pvalue > 0.01
    assert len(set(filled)) > 0.5 * len(filled)


def test_a_live_healer_holds_its_incident(system: dict[str, Any]) -> None:
    healer = _healer(system["config"])
    healer.record(_observe(_signal(SignalKind.DATA_DRIFT)))
    (incident,) = healer.log.incidents()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        assert take(
            healer.ctx.lake,
            Lease(incident.id, 0, socket.gethostname(), other.pid, datetime.now(UTC) + timedelta(minutes=5)),
        )
        assert not claim(healer.ctx.lake, incident.id, datetime.now(UTC))
    finally:
        other.kill()
        other.wait()
    assert claim(healer.ctx.lake, incident.id, datetime.now(UTC))  # its holder died: take over at once
    assert claim(healer.ctx.lake, incident.id, datetime.now(UTC))  # and keep it


@pytest.mark.integration
def test_healer_killed_mid_remedy_resumes_and_applies_it_once(system: dict[str, Any]) -> None:
    tmp, frame = system["tmp"], system["frame"]
    # The mechanism under test is resume-after-kill; the cause only picks the policy. A
    # data-quality incident is settled by the healer's own observation, so no monitor is needed.
    config = _rewrite(system, trainer=SLOW_TRAINER, healing={"policy": {"data_quality": ["retrain"]}})
    write_batches(frame.iloc[380:], tmp / "landing", parts=1, start=2)  # new data to retrain on
    healer = _healer(config)
    healer.record(_observe(_signal(SignalKind.DATA_QUALITY)))
    versions_before = len(healer.ctx.registry.client.search_model_versions(f"name='{healer.ctx.registry.model_name}'"))

    marker = tmp / "fitting"
    proc = start_cli(config, "heal", "--once", "--no-monitor", marker=marker)
    kill_9_mid_fit(proc, marker)
    (incident,) = healer.log.incidents()
    assert incident.state == State.HEALING  # killed mid-remedy

    for _ in range(4):
        healer.tick(_observe())
    (incident,) = healer.log.incidents()
    assert incident.state == State.RESOLVED, incident.last.detail
    healing = [t for t in incident.transitions if t.state == State.HEALING]
    assert [(t.remedy, t.attempt) for t in healing] == [("retrain", 1)]  # resumed, not restarted
    versions_after = len(healer.ctx.registry.client.search_model_versions(f"name='{healer.ctx.registry.model_name}'"))
    assert versions_after == versions_before + 1  # the model was trained and registered once


def test_a_store_that_goes_down_after_the_probe_is_an_outage_seen_in_the_same_tick(system: dict[str, Any]) -> None:
    """The lock lands between the tick's store probe and its champion read: no stall until it lifts."""
    from chaos.registry.actions import make_tracking_store_unreachable, restore_tracking_store
    from serving import processes

    healer = _healer(system["config"])
    assert healer.ctx.registry.by_alias(CHAMPION) is not None  # the store answers; the client is built
    uri = healer.cfg.tracking_uri
    assert uri is not None
    locked = make_tracking_store_unreachable(uri, duration=60)
    try:
        touched = healer.record(_observe())  # the probe saw the store up a moment ago: no signal
        assert [i.cause for i in touched] == ["upstream_outage"]
        assert "no answer from the registry" in touched[0].evidence["tracking_store"]
        assert processes.alive(locked["pid"]), "record() waited until the lock was lifted"
    finally:
        restore_tracking_store(uri)


# -- a champion the server refuses (issue 15: models only from the registry's own store) -------
def _refused_registry(tmp_path: Path, healing: bool) -> Healer:
    """A real registry: v1 the good champion before the fault, v2 (stored outside) promoted over it."""
    from mlflow import MlflowClient

    from flows.config import SelfhealConfig
    from flows.registry import PREVIOUS, PROMOTED_AT_TAG

    cfg = SelfhealConfig(home=str(tmp_path), lake={"root": str(tmp_path / "lake")}, healing={"enabled": healing})
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    client.create_registered_model(cfg.model_name)
    for source in (Path(cfg.artifact_root) / "v1", tmp_path.parent / "elsewhere"):
        client.create_model_version(cfg.model_name, source=source.as_uri())
    client.set_registered_model_alias(cfg.model_name, PREVIOUS, "1")
    client.set_registered_model_alias(cfg.model_name, CHAMPION, "2")
    client.set_model_version_tag(cfg.model_name, "2", PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
    ctx = make_context(cfg, None)
    return Healer(ctx, IncidentLog(ctx.lake))


def _refused() -> Signal:
    evidence = {"refused": {"version": "2", "reason": "outside_root", "detail": "not under the artifact root"}}
    return _signal(SignalKind.MODEL_REFUSED, **evidence)


def test_a_refused_champion_is_rolled_back_and_resolved_without_a_monitor_window(tmp_path: Path) -> None:
    healer = _refused_registry(tmp_path, healing=True)
    healer.tick(_observe(_refused()))
    time.sleep(0.01)  # the next observation starts after the rollback was applied
    healer.tick(_observe())
    [incident] = healer.log.incidents()
    assert incident.cause == "bad_deploy" and incident.state == State.RESOLVED, incident.last.detail
    assert incident.last.remedy == "rollback"
    registry = healer.ctx.registry
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]
    assert registry.by_alias("previous").version == "1"  # type: ignore[union-attr]  # never the refused one


def test_with_healing_off_a_refused_champion_stays_and_its_incident_stays_open(tmp_path: Path) -> None:
    healer = _refused_registry(tmp_path, healing=False)
    healer.tick(_observe(_refused()))
    healer.tick(_observe())
    [incident] = healer.log.incidents()
    assert incident.cause == "bad_deploy" and not incident.state.closed
    assert healer.ctx.registry.by_alias(CHAMPION).version == "2"  # type: ignore[union-attr]


def test_a_signal_seen_before_a_person_closed_its_incident_does_not_open_another(tmp_path: Path) -> None:
    """The chaos matrix's race (healing off): the refusal is seen, a person rolls back and closes the
    incident while the tick is still running, then the tick records what it saw."""
    healer = _refused_registry(tmp_path, healing=False)
    healer.tick(_observe(_refused()))
    [incident] = healer.log.incidents()
    seen_before = _observe(_refused())
    time.sleep(0.01)
    escalated = healer.log.advance(incident, State.ESCALATED, detail="taken over by on-call")
    assert escalated is not None
    healer.log.acknowledge(escalated, "on-call")  # a person has it: no hold on the cause
    healer.tick(seen_before)
    assert [i.id for i in healer.log.incidents()] == [incident.id]
    healer.tick(_observe(_refused()))  # seen after the closing: the fault is still there, a new incident
    assert len(healer.log.open_incidents()) == 1 and healer.log.open_incidents()[0].id != incident.id


def test_a_running_healer_reads_a_signal_stamped_before_its_last_tick_but_committed_after_it(tmp_path: Path) -> None:
    """A pipeline run stamps what it posts before its commit lands: a tick that started in between
    read nothing, and a window from that tick on would never see it (a concept drift missed in CI)."""
    from flows.healer.machine import Delivered, observe
    from flows.monitor import inbox

    ctx = _refused_registry(tmp_path, healing=True).ctx
    delivered = Delivered(started_at=datetime.now(UTC) - timedelta(seconds=5))
    drop = replace(_signal(SignalKind.PERFORMANCE_DROP, metric="roc_auc", value=0.49), source="batch")
    stamped = datetime.now(UTC)
    time.sleep(0.01)
    before_commit = observe(ctx, stamped - timedelta(seconds=1), run_monitor=False, delivered=delivered)
    inbox.post(ctx.lake, [drop], source="pipeline", now=stamped)  # lands after that tick read

    def drops(since: datetime, with_delivered: bool = True) -> int:
        seen = observe(ctx, since, run_monitor=False, delivered=delivered if with_delivered else None)
        return sum(s.kind == SignalKind.PERFORMANCE_DROP for s in seen.signals)

    assert drops(before_commit.started_at, with_delivered=False) == 0  # the window from the last tick misses it
    assert drops(before_commit.started_at) == 1
    assert drops(datetime.now(UTC)) == 0  # delivered once


# -- a torn commit in a stage table (issue 14: lake-torn-commit) ------------------------------
def _tick_on_lake(healer: Healer, ticks: int) -> None:
    from flows.healer.machine import probe_lake

    for _ in range(ticks):
        now = datetime.now(UTC)
        healer.tick(Observation(now, probe_lake(healer.ctx, now)))


@pytest.mark.parametrize("healing", [True, False])
def test_a_torn_commit_is_set_aside_and_the_next_run_lands_the_new_batch(system: dict[str, Any], healing: bool) -> None:
    """Every run fails at a torn silver until the healer sets the entry aside; healing off leaves it."""
    from chaos.pipeline.actions import tear_newest_commit
    from checkpoints.exceptions import CheckpointCorrupted

    tmp, frame = system["tmp"], system["frame"]
    config = _rewrite(system, healing={"enabled": healing})
    lake_root = str(load_config(config).lake.root)
    torn = tear_newest_commit(lake_root, table="silver")
    write_batches(frame.iloc[380:], tmp / "landing", parts=1, start=2)
    with pytest.raises(CheckpointCorrupted):
        pipeline_flow(str(config))  # the run fails at the torn table, not on the batch's content
    healer = _healer(config)
    _tick_on_lake(healer, ticks=3)
    (incident,) = healer.log.incidents()
    assert incident.cause == "lake_corrupted"
    if not healing:
        assert incident.state == State.DIAGNOSED and "silver" in incident.evidence["torn"]
        with pytest.raises(CheckpointCorrupted):
            healer.ctx.lake.version("silver")
        return
    assert incident.state == State.RESOLVED, incident.last.detail
    assert incident.remedies_tried == ["recover_tables"]
    assert healer.ctx.lake.version("silver") == torn["last_good_version"]
    kept = Path(lake_root) / "silver" / "_delta_log" / "_corrupted" / f"{torn['torn_version']:020d}.json"
    assert kept.is_file()  # set aside for inspection, never deleted
    assert pipeline_flow(str(config)).outcome in ("promoted", "rejected")  # it trained on the new batch
    assert healer.ctx.lake.version("silver") > torn["last_good_version"]
    assert healer.ctx.lake.read("bronze").num_rows == len(frame)  # the new batch landed once


def test_new_categories_with_unfelt_drift_and_a_measured_drop_are_the_shift_not_a_data_quality_fault(
    system: dict[str, Any],
) -> None:
    # What a landed batch from a new payment gateway raised in the chaos matrix: the estimate
    # saw no harm, the batch's own labels did, and the new gateway was its new category.
    config = _rewrite(system, healing={"enabled": False})
    healer = _healer(config)
    unfelt = {"prediction_drift": False, "estimated_drop": False, "reaches_model": False}
    new_gateway = [{"feature": "gateway", "issue": "new_category", "value": 0.44, "threshold": 0.01}]
    healer.tick(_observe(_signal(SignalKind.DATA_QUALITY, Severity.WARNING, issues=new_gateway)))
    assert healer.log.incidents() == []  # a new value in a free column is drift evidence, not a broken expectation

    drift = _signal(SignalKind.DATA_DRIFT, Severity.WARNING, features=["gateway"], impact=unfelt)
    drop = _signal(SignalKind.PERFORMANCE_DROP, metric="roc_auc", value=0.8, baseline=0.9, inputs_drifted=True)
    quality = _signal(SignalKind.DATA_QUALITY, Severity.WARNING, issues=new_gateway)
    healer.tick(_observe(*(replace(s, source="batch") for s in (drift, drop, quality))))
    assert [i.cause for i in healer.log.incidents()] == ["data_drift"]
