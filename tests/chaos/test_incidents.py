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


def _row(lake: Lake, incident: str, cause: str, state: str, detected: float, at: float | None = None) -> None:
    row = {
        "incident_id": incident,
        "cause": cause,
        "state": state,
        "ts": datetime.fromtimestamp(at or time.time(), UTC),
        "detected_at": datetime.fromtimestamp(detected, UTC),
        "remedy": None,
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
