"""The incident and decisions logs on real tables: read incrementally, whole again after a rewrite."""

from __future__ import annotations

from checkpoints import Lake
from checkpoints.decisions import DecisionLog
from checkpoints.incidents import INCIDENTS, IncidentLog, State


def test_a_log_reads_only_new_files_and_sees_every_writer(lake: Lake) -> None:
    mine, theirs = IncidentLog(lake), IncidentLog(lake)
    first = mine.open("data_drift", {"features": ["amount"]})
    assert [i.id for i in theirs.incidents()] == [first.id]
    theirs.advance(first, State.DIAGNOSED, detail="rule")
    second = theirs.open("serving_down", {})
    seen = mine.incidents()
    assert [(i.id, i.state) for i in seen] == [(first.id, State.DIAGNOSED), (second.id, State.DETECTED)]
    assert [t.seq for t in seen[0].transitions] == [0, 1]
    files = mine._tail.files
    mine.advance(seen[1], State.DIAGNOSED)
    assert mine.incidents()[1].state == State.DIAGNOSED
    assert files < mine._tail.files and len(mine._tail.files) == len(files) + 1  # one new file read, the rest kept


def test_a_rewritten_log_is_read_whole_again(lake: Lake) -> None:
    log = IncidentLog(lake)
    kept = log.open("data_drift", {})
    log.advance(kept, State.DIAGNOSED)
    restored_to = lake.version(INCIDENTS)
    log.open("latency", {})
    assert len(log.incidents()) == 2
    lake.restore(INCIDENTS, restored_to)  # a restore removes the newer file: the cached rows are stale
    assert [(i.id, i.state) for i in log.incidents()] == [(kept.id, State.DIAGNOSED)]


def test_pins_follow_the_newest_say_per_cause_and_vetoes_are_per_incident(lake: Lake) -> None:
    log = DecisionLog(lake)
    log.pin("data_drift", "rollback", by="ana")
    log.pin("latency", "light_model", by="ana")
    log.pin("data_drift", "retrain", by="bo")
    log.unpin("latency", by="bo")
    log.say("veto", "data_drift", "retrain", "ana", incident_id="inc-1")
    assert DecisionLog(lake).pins() == {"data_drift": "retrain"}
    assert log.vetoed("inc-1") == {"retrain"} and log.vetoed("inc-2") == set()
    assert [d.kind for d in log.decisions()] == ["pin", "pin", "pin", "unpin", "veto"]
