"""The fault ledger on a real file: runs, faults, restores, torn lines, clock starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos import ledger


def test_without_a_ledger_nothing_is_recorded_and_clocks_start_now() -> None:
    assert ledger.record(None, "fault", fault="kill_server", at=5.0) == 5.0
    assert ledger.current_run({}) == [] and ledger.last_event({}, "fault") is None


def test_the_current_run_starts_at_the_newest_run_mark(tmp_path: Path) -> None:
    config: dict[str, Any] = {ledger.LEDGER_KEY: str(tmp_path / "sub" / "ledger.jsonl")}
    ledger.record(config, "run", experiment="first", at=1.0)
    ledger.record(config, "fault", fault="kill_server", at=2.0)
    ledger.record(config, "run", experiment="second", at=10.0)
    ledger.record(config, "fault", fault="inject_drift", detail={"share": 0.5}, at=11.0)
    ledger.record(config, "restore", fault="restore_drift", at=12.0)
    ledger.record(config, "fault", fault="kill_worker", detail={"pid": 4242}, at=13.0)
    run = ledger.current_run(config)
    assert [(e.event, e.at) for e in run] == [("run", 10.0), ("fault", 11.0), ("restore", 12.0), ("fault", 13.0)]
    assert run[0].experiment == "second" and run[1].detail == {"share": 0.5}
    assert ledger.last_event(config, "fault") == 13.0 and ledger.last_event(config, "restore") == 12.0
    assert ledger.clock_start(config, "fault") == 13.0 and ledger.clock_start(config, "restore") == 12.0
    # The newest detail of the named faults, this run only ("first"'s kill_server is not in it).
    assert ledger.last_fault(config, "inject_drift") == {"share": 0.5}
    assert ledger.last_fault(config, "hang_worker", "kill_worker") == {"pid": 4242}
    assert ledger.last_fault(config, "kill_server") is None and ledger.last_fault({}, "kill_worker") is None


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    config = {ledger.LEDGER_KEY: str(path)}
    ledger.record(config, "run", experiment="x", at=1.0)
    ledger.record(config, "fault", fault="kill_server", at=2.0)
    with path.open("a") as fh:
        fh.write('{"event": "fault", "at": 3.')  # a writer killed mid-line
    assert [e.at for e in ledger.entries(path)] == [1.0, 2.0]
    assert ledger.entries(tmp_path / "missing.jsonl") == []


def test_before_any_fault_the_clock_starts_now_and_since_is_checked(tmp_path: Path) -> None:
    config = {ledger.LEDGER_KEY: str(tmp_path / "ledger.jsonl")}
    ledger.record(config, "run", experiment="x", at=1.0)
    assert ledger.clock_start(config, "fault") > 1.0  # no fault this run: now
    ledger.record(config, "fault", fault="kill_server", at=2.0)
    assert ledger.clock_start(config, "now") > 2.0
    with pytest.raises(ValueError, match="since must be"):
        ledger.clock_start(config, "injection")


def test_since_event_is_the_events_time_or_none_and_checks_since(tmp_path: Path) -> None:
    config = {ledger.LEDGER_KEY: str(tmp_path / "ledger.jsonl")}
    ledger.record(config, "run", experiment="x", at=1.0)
    assert ledger.since_event(config, "fault") is None  # no fault this run yet
    ledger.record(config, "fault", fault="kill_server", at=2.0)
    assert ledger.since_event(config, "fault") == 2.0 and ledger.since_event(config, "now") is None
    with pytest.raises(ValueError, match="since must be"):
        ledger.since_event(config, "injection")
