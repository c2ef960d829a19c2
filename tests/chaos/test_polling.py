"""Poll-until and the fault ledger: both ways (met -> seconds; never met -> ActivityFailed after the timeout)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import ledger
from chaos._polling import Check, poll_until, seconds_until


def test_met_at_once_returns_about_zero() -> None:
    assert poll_until(lambda: Check(True, "yes"), timeout=5, what="x", started_at=time.time()) < 0.5


def test_met_later_returns_the_seconds_it_took() -> None:
    ready_at = time.time() + 0.6
    seconds = poll_until(
        lambda: Check(time.time() >= ready_at, "t"), timeout=5, what="x", started_at=time.time(), interval=0.05
    )
    assert 0.55 <= seconds < 1.5


def test_the_clock_can_start_before_the_probe() -> None:
    started = time.time() - 3.0
    assert poll_until(lambda: Check(True), timeout=10, what="x", started_at=started) >= 3.0


def test_never_met_fails_after_the_timeout_with_the_last_detail() -> None:
    started = time.time()
    with pytest.raises(ActivityFailed, match=r"never: not met within 0\.5s .*last seen: still 503"):
        poll_until(lambda: Check(False, "still 503"), timeout=0.5, what="never", started_at=started, interval=0.1)
    assert 0.45 <= time.time() - started < 1.5


def test_deadline_already_passed_looks_once() -> None:
    looks = []

    def look() -> Check:
        looks.append(1)
        return Check(False, "no")

    with pytest.raises(ActivityFailed):
        poll_until(look, timeout=1, what="x", started_at=time.time() - 10)
    assert len(looks) == 1


def test_fatal_stops_waiting() -> None:
    started = time.time()
    with pytest.raises(ActivityFailed, match="cannot be met: escalated"):
        poll_until(lambda: Check(False, "escalated", fatal=True), timeout=30, what="x", started_at=started)
    assert time.time() - started < 1


def test_an_exception_counts_as_not_met() -> None:
    def look() -> Check:
        raise ConnectionError("refused")

    with pytest.raises(ActivityFailed, match="ConnectionError: refused"):
        poll_until(look, timeout=0.2, what="x", started_at=time.time(), interval=0.05)


@pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"timeout": 1, "interval": 0}])
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        poll_until(lambda: Check(True), what="x", started_at=time.time(), **kwargs)


# -- the ledger ------------------------------------------------------------------------
def test_no_ledger_clock_starts_now() -> None:
    before = time.time()
    assert ledger.record(None, "fault", fault="x") >= before
    assert before <= ledger.clock_start(None) <= time.time()
    assert ledger.current_run({}) == []


def test_clock_starts_at_this_runs_fault_not_an_earlier_runs(tmp_path: Path) -> None:
    cfg = {ledger.LEDGER_KEY: str(tmp_path / "l.jsonl")}
    ledger.record(cfg, "run", experiment="first")
    old = ledger.record(cfg, "fault", fault="kill_worker")
    ledger.record(cfg, "run", experiment="second")
    assert ledger.last_event(cfg, "fault") is None
    assert ledger.clock_start(cfg, "fault") > old  # no fault in this run: now
    fault = ledger.record(cfg, "fault", fault="cut_link", detail={"namespace": "n"})
    restore = ledger.record(cfg, "restore", fault="restore_link")
    assert ledger.clock_start(cfg, "fault") == fault
    assert ledger.clock_start(cfg, "restore") == restore
    assert [e.fault for e in ledger.current_run(cfg)] == ["", "cut_link", "restore_link"]
    assert ledger.current_run(cfg)[1].detail == {"namespace": "n"}


def test_a_recovery_counts_from_this_runs_fault_or_from_now(tmp_path: Path) -> None:
    cfg = {ledger.LEDGER_KEY: str(tmp_path / "l.jsonl")}
    ledger.record(cfg, "run", experiment="x")
    ledger.record(cfg, "fault", fault="kill_worker", at=time.time() - 3.0)
    assert seconds_until(lambda: Check(True), "back", 10, "fault", 0.1, cfg) >= 3.0
    assert seconds_until(lambda: Check(True), "back", 10, "now", 0.1, cfg) < 0.5
    with pytest.raises(ActivityFailed, match=r"back: not met within 2s"):
        seconds_until(lambda: Check(False), "back", 2, "fault", 0.1, cfg)  # the deadline passed with the fault


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    cfg = {ledger.LEDGER_KEY: str(path)}
    ledger.record(cfg, "run")
    at = ledger.record(cfg, "fault", fault="x")
    with path.open("a") as fh:
        fh.write('{"event": "fau')
    assert ledger.last_event(cfg, "fault") == at


def test_since_must_be_known() -> None:
    with pytest.raises(ValueError, match="since"):
        ledger.clock_start(None, "yesterday")
