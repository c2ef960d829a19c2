"""The incident probe against a real Delta ``incidents`` table written to the healer's contract."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import ledger
from chaos.incidents import probes
from checkpoints import Lake, incidents

#: The contract: the healer's schema without ``seq`` (the log has it, the probe must not need it).
SCHEMA = pa.schema([f for f in incidents.SCHEMA if f.name != "seq"])


def _row(
    lake: Lake,
    incident: str,
    cause: str,
    state: str,
    detected: float,
    at: float | None = None,
    remedy: str | None = None,
) -> None:
    row = {
        "incident_id": incident,
        "cause": cause,
        "state": state,
        "ts": datetime.fromtimestamp(at or time.time(), UTC),
        "detected_at": datetime.fromtimestamp(detected, UTC),
        "remedy": remedy,
        "attempt": 0,
        "actor": "test",
        "evidence": "{}",
        "detail": f"{state.lower()} by the test",
        "mttr_seconds": None,
    }
    lake.append("incidents", pa.Table.from_pylist([row], schema=SCHEMA))


def test_resolved_after_the_fault_returns_seconds_from_the_fault(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    fault = ledger.record(config, "fault", fault="kill_server")
    _row(lake, "old", "serving_down", "RESOLVED", fault - 100, fault - 90)  # an earlier incident does not count
    _row(lake, "inc-1", "serving_down", "DETECTED", fault + 1.0, fault + 1.0)

    def heal() -> None:
        time.sleep(0.5)
        _row(lake, "inc-1", "serving_down", "HEALING", fault + 1.0, fault + 2.0)
        _row(lake, "inc-1", "serving_down", "RESOLVED", fault + 1.0, fault + 3.0)

    healer = threading.Thread(target=heal)
    healer.start()
    seconds = probes.seconds_until_incident_resolved(
        str(lake.root), "serving_down", timeout=30, interval=0.2, configuration=config
    )
    healer.join()
    assert seconds == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize(
    "fault,cause,state,timeout,match",
    [
        pytest.param(
            "promote_bad_model",
            "bad_deploy",
            "DIAGNOSED",
            1,
            "bad_deploy incident RESOLVED: not met within 1s.*inc-2 DIAGNOSED",
            id="never-resolved-fails-after-the-timeout",
        ),
        pytest.param(
            "inject_drift",
            "concept_drift",
            "ESCALATED",
            30,
            "cannot be met: inc-2 ESCALATED",
            id="escalated-fails-at-once",
        ),
    ],
)
def test_an_unresolved_incident_fails_within_seconds(
    tmp_path: Path, config: dict[str, Any], fault: str, cause: str, state: str, timeout: float, match: str
) -> None:
    lake = Lake(tmp_path / "lake")
    at = ledger.record(config, "fault", fault=fault)
    _row(lake, "inc-2", cause, state, at + 0.5)
    started = time.time()
    with pytest.raises(ActivityFailed, match=match):
        probes.seconds_until_incident_resolved(
            str(lake.root), cause, timeout=timeout, interval=0.2, configuration=config
        )
    assert time.time() - started < 5


def test_not_even_detected(tmp_path: Path, config: dict[str, Any]) -> None:
    ledger.record(config, "fault", fault="inject_drift")
    with pytest.raises(ActivityFailed, match="no data_drift incident detected since the fault"):
        probes.seconds_until_incident_resolved(str(tmp_path / "lake"), "data_drift", timeout=0.3, configuration=config)


def test_before_any_fault_it_waits_for_no_open_incident(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    assert probes.seconds_until_incident_resolved(str(lake.root), "serving_down", timeout=1, configuration=config) == 0
    _row(lake, "inc-4", "serving_down", "HEALING", time.time())
    assert probes.open_incidents(str(lake.root)) == 1
    assert probes.open_incidents(str(lake.root), cause="data_drift") == 0
    with pytest.raises(ActivityFailed, match="no open serving_down incident: not met within 0.5s.*inc-4 HEALING"):
        probes.seconds_until_incident_resolved(str(lake.root), "serving_down", timeout=0.5, configuration=config)


# -- an outage the scenario ends: open while it lasts, resolved after it ----------------------
OUTAGE = "upstream_outage"


def test_stays_open_while_the_fault_persists(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    fault = ledger.record(config, "fault", fault="make_tracking_store_unreachable")
    _row(lake, "old", OUTAGE, "RESOLVED", fault - 100, fault - 90)  # an earlier outage's incident does not count
    _row(lake, "inc-5", OUTAGE, "DIAGNOSED", fault + 0.2, fault + 0.2)
    _row(lake, "inc-5", OUTAGE, "VERIFYING", fault + 0.2, fault + 0.3, remedy="hold_fallback")
    seconds = probes.seconds_incident_stays_open(
        str(lake.root), OUTAGE, hold_seconds=1.0, interval=0.2, configuration=config
    )
    assert time.time() >= fault + 1.0
    assert seconds >= 0.8


@pytest.mark.parametrize(
    "rows,match",
    [
        pytest.param([], "no upstream_outage incident within 0.5 s of the fault", id="never-opened"),
        pytest.param(
            [("DIAGNOSED", 0.2), ("RESOLVED", 0.3)], "inc-6 RESOLVED while the fault persists", id="falsely-verified"
        ),
        pytest.param([("ESCALATED", 0.3)], "inc-6 ESCALATED while the fault persists", id="escalated"),
    ],
)
def test_stays_open_fails_at_once(
    tmp_path: Path, config: dict[str, Any], rows: list[tuple[str, float]], match: str
) -> None:
    lake = Lake(tmp_path / "lake")
    fault = ledger.record(config, "fault", fault="make_tracking_store_unreachable")
    for state, after in rows:
        _row(lake, "inc-6", OUTAGE, state, fault + 0.2, fault + after)
    started = time.time()
    with pytest.raises(ActivityFailed, match=match):
        probes.seconds_incident_stays_open(
            str(lake.root), OUTAGE, hold_seconds=30, detect_seconds=0.5, interval=0.1, configuration=config
        )
    assert time.time() - started < 5


def test_resolved_after_the_restore_returns_seconds_from_the_restore(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    fault = ledger.record(config, "fault", fault="make_tracking_store_unreachable", at=time.time() - 10)
    restored = ledger.record(config, "restore", fault="restore_tracking_store", at=fault + 8)
    _row(lake, "inc-7", OUTAGE, "VERIFYING", fault + 1, fault + 1.5, remedy="hold_fallback")
    _row(lake, "inc-7", OUTAGE, "RESOLVED", fault + 1, restored + 1.25, remedy="hold_fallback")
    _row(lake, "inc-8", OUTAGE, "DETECTED", restored + 3, restored + 3)  # opened after the return: not this one's
    seconds = probes.seconds_until_incident_resolved_after_restore(
        str(lake.root), OUTAGE, timeout=5, remedy="hold_fallback", interval=0.2, configuration=config
    )
    assert seconds == pytest.approx(1.25, abs=0.01)


@pytest.mark.parametrize(
    "resolved_after,remedy,match",
    [
        pytest.param(-2.0, "hold_fallback", "inc-9 RESOLVED before the fault was undone", id="resolved-while-down"),
        pytest.param(1.0, "rollback", "inc-9 RESOLVED by rollback, not hold_fallback", id="another-remedy"),
    ],
)
def test_resolved_after_the_restore_refuses_a_wrong_resolution(
    tmp_path: Path, config: dict[str, Any], resolved_after: float, remedy: str, match: str
) -> None:
    lake = Lake(tmp_path / "lake")
    fault = ledger.record(config, "fault", fault="make_tracking_store_unreachable", at=time.time() - 10)
    restored = ledger.record(config, "restore", fault="restore_tracking_store", at=fault + 8)
    _row(lake, "inc-9", OUTAGE, "RESOLVED", fault + 1, restored + resolved_after, remedy=remedy)
    with pytest.raises(ActivityFailed, match=match):
        probes.seconds_until_incident_resolved_after_restore(
            str(lake.root), OUTAGE, timeout=30, remedy="hold_fallback", interval=0.2, configuration=config
        )


def test_resolved_after_the_restore_needs_a_restore_and_an_incident(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    assert (
        probes.seconds_until_incident_resolved_after_restore(str(lake.root), OUTAGE, timeout=1, configuration=config)
        == 0
    )
    fault = ledger.record(config, "fault", fault="make_tracking_store_unreachable")
    with pytest.raises(ActivityFailed, match="was not undone"):
        probes.seconds_until_incident_resolved_after_restore(str(lake.root), OUTAGE, timeout=1, configuration=config)
    restored = ledger.record(config, "restore", fault="restore_tracking_store", at=fault + 0.5)
    with pytest.raises(ActivityFailed, match="no upstream_outage incident detected between the fault and the restore"):
        probes.seconds_until_incident_resolved_after_restore(str(lake.root), OUTAGE, timeout=1, configuration=config)
    # One written after the restore (the lake's own store was down) counts by when it was detected.
    _row(lake, "inc-late", OUTAGE, "DIAGNOSED", detected=fault + 0.1, at=restored + 0.6)
    _row(lake, "inc-late", OUTAGE, "RESOLVED", detected=fault + 0.1, at=restored + 0.8, remedy="hold_fallback")
    seconds = probes.seconds_until_incident_resolved_after_restore(
        str(lake.root), OUTAGE, timeout=5, remedy="hold_fallback", configuration=config
    )
    assert 0.7 <= seconds <= 0.9


def test_closed_naming_the_fault_files_escalated_or_resolved(tmp_path: Path, config: dict[str, Any]) -> None:
    lake = Lake(tmp_path / "lake")
    assert (
        probes.seconds_until_incident_names_fault(str(lake.root), "data_quality", timeout=1, configuration=config) == 0
    )
    at = ledger.record(config, "fault", fault="corrupt_batch", detail={"paths": ["/landing/batch-00007.parquet"]})
    _row(lake, "inc-5", "data_quality", "DETECTED", at + 0.5, at + 0.5)
    named = '{"quarantined": [{"source": "/landing/batch-00007.parquet", "reason": "TypeError"}]}'
    other = '{"quarantined": [{"source": "/landing/batch-00003.parquet"}]}'
    _with_evidence(lake, "inc-5", "ESCALATED", at + 0.5, at + 4.0, other)  # a person is told about another file
    with pytest.raises(ActivityFailed, match="not met within 0.5s.*inc-5 ESCALATED.*waiting for one closed naming"):
        probes.seconds_until_incident_names_fault(
            str(lake.root), "data_quality", timeout=0.5, interval=0.1, configuration=config
        )
    _with_evidence(lake, "inc-6", "DETECTED", at + 1.0, at + 1.0, named)
    _with_evidence(lake, "inc-6", "ESCALATED", at + 1.0, at + 6.0, '{"champion": "3"}')
    seconds = probes.seconds_until_incident_names_fault(str(lake.root), "data_quality", timeout=5, configuration=config)
    assert seconds == pytest.approx(6.0, abs=0.01)


def _with_evidence(lake: Lake, incident: str, state: str, detected: float, at: float, evidence: str) -> None:
    row = {
        "incident_id": incident,
        "cause": "data_quality",
        "state": state,
        "ts": datetime.fromtimestamp(at, UTC),
        "detected_at": datetime.fromtimestamp(detected, UTC),
        "remedy": None,
        "attempt": 0,
        "actor": "test",
        "evidence": evidence,
        "detail": f"{state.lower()} by the test",
        "mttr_seconds": None,
    }
    lake.append("incidents", pa.Table.from_pylist([row], schema=SCHEMA))
