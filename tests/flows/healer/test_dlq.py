"""The dead-letter queue as a healer signal, and the replay remedy, on a real registry and lake.

A batch file is scored while the predictions table cannot be written for one chunk (the
lake's delta-rs writer raises ``OSError`` on that call, as a full disk), so its rows go to
the dead-letter queue next to rows the input contract refused. The healer then ticks on
what ``probe_dlq`` sees. The tables are counted directly (Arrow reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpoints import Lake
from checkpoints.incidents import IncidentLog, State
from flows.batch import delivery
from flows.batch.inputs import Source, read
from flows.batch.scoring import PREDICTIONS
from flows.config import load_config
from flows.healer import dlq
from flows.healer.machine import Healer, Observation, make_context, observe
from flows.monitor.signals import SignalKind
from tests.flows.batch.test_delivery import (
    CHUNK,
    Store,
    _dlq_states,
    _fail_writes,
    _predicted_rows,
    _rows_of,
    _transactions,
    _waiting,
    _write,
    crash_replays_after_landing,
    make_store,
)

INVALID = {3, 450}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A registry with one champion, loaded (``tests.flows.batch``'s)."""
    yield from make_store(tmp_path_factory)


def _healer(store: Store, tmp_path: Path, **healing: Any) -> Healer:
    path = store.config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["healing"] = {"dlq_grace_seconds": 0, **healing}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(str(path), check_estimator=False)
    ctx = make_context(cfg, str(path))
    return Healer(ctx, IncidentLog(ctx.lake))


def _dead_lettered(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Score a 600-row file whose second chunk's write fails; two rows are refused. Its input version."""
    lake = Lake(tmp_path / "lake")
    frame = _transactions(12, 600)
    frame["amount"] = frame["amount"].map(repr).astype(object)
    frame.loc[sorted(INVALID), "amount"] = "n/a"
    path = _write(tmp_path / "in" / "batch.parquet", frame)
    _fail_writes(monkeypatch, PREDICTIONS, calls={2})
    done = delivery.score_source(lake, store.model, Source("file", str(path)), PREDICTIONS, chunk_rows=CHUNK)
    monkeypatch.undo()
    assert done.dead_lettered == {"invalid": 2, "write": 200}
    return read(lake, Source("file", str(path))).version  # type: ignore[union-attr]


def _tick(healer: Healer, ticks: int) -> None:
    for _ in range(ticks):
        now = datetime.now(UTC)
        healer.tick(Observation(now, dlq.probe_dlq(healer.ctx.lake, now, healer.cfg.healing.dlq_grace_seconds)))


def test_only_delivery_failures_past_the_grace_raise_the_signal(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path / "lake")
    assert dlq.probe_dlq(lake, datetime.now(UTC), 0) == []  # no queue yet
    _dead_lettered(store, tmp_path, monkeypatch)
    waiting = dlq.delivery_failed(lake)
    assert waiting.rows == 200 and len(waiting.batches) == 1  # the refused rows are not delivery failures
    assert all("No space left on device" in reason for reason in waiting.reasons)
    assert dlq.probe_dlq(lake, datetime.now(UTC), grace_seconds=3600) == []  # within the grace
    [signal] = dlq.probe_dlq(lake, datetime.now(UTC), grace_seconds=0)
    assert signal.kind == SignalKind.OUTPUT_DELIVERY and signal.evidence["dlq"]["rows"] == 200
    # The healer's own observation carries it.
    healer = _healer(store, tmp_path)
    seen = observe(healer.ctx, datetime.now(UTC), run_monitor=False)
    assert [s.evidence["dlq"]["rows"] for s in seen.signals if s.kind == SignalKind.OUTPUT_DELIVERY] == [200]


@pytest.mark.parametrize("healing", [True, False])
def test_the_healer_replays_delivery_failures_once_and_leaves_refused_rows(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, healing: bool
) -> None:
    sha = _dead_lettered(store, tmp_path, monkeypatch)
    healer = _healer(store, tmp_path, enabled=healing)
    _tick(healer, 4)

    [incident] = healer.log.incidents()
    lake = Lake(tmp_path / "lake")
    assert incident.cause == "output_delivery"
    if not healing:
        assert incident.state == State.DIAGNOSED
        assert len(_waiting(lake)) == 202 and _predicted_rows(lake, sha) == sorted(
            set(range(600)) - set(range(200, 400)) - INVALID
        )
        return
    assert incident.state == State.RESOLVED, incident.last.detail
    assert incident.remedies_tried == ["replay_dlq"]
    assert _predicted_rows(lake, sha) == sorted(set(range(600)) - INVALID)  # each row once
    assert _waiting(lake) == {(sha, row) for row in INVALID}  # bad input stays for a person
    assert {state for state, _ in _rows_of(_dlq_states(lake), sha).values()} == {"replayed", "queued"}


def test_a_replay_into_a_destination_still_broken_fails_and_escalates(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = _dead_lettered(store, tmp_path, monkeypatch)
    healer = _healer(store, tmp_path)
    _fail_writes(monkeypatch, PREDICTIONS, calls=set(range(1, 100)))  # the disk is still full
    _tick(healer, 4)
    monkeypatch.undo()

    [incident] = healer.log.incidents()
    assert incident.state == State.ESCALATED
    assert any(t.detail.startswith("failed to apply: 200 row(s) still refused") for t in incident.transitions)
    lake = Lake(tmp_path / "lake")
    assert len(_waiting(lake)) == 202
    assert _predicted_rows(lake, sha) == sorted(set(range(600)) - set(range(200, 400)) - INVALID)


def test_a_healer_killed_mid_replay_lands_each_row_once_when_it_resumes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = _dead_lettered(store, tmp_path, monkeypatch)
    healer = _healer(store, tmp_path)
    crash_replays_after_landing(monkeypatch)  # the healer dies after the replay's commit, before recording it
    with pytest.raises(KeyboardInterrupt):
        _tick(healer, 1)
    monkeypatch.undo()
    lake = Lake(tmp_path / "lake")
    assert _predicted_rows(lake, sha) == sorted(set(range(600)) - INVALID)  # landed, not recorded
    [incident] = healer.log.incidents()
    assert incident.state == State.HEALING

    resumed = _healer(store, tmp_path)  # a new healer process picks the incident up where it stopped
    _tick(resumed, 4)
    [incident] = resumed.log.incidents()
    assert incident.state == State.RESOLVED, incident.last.detail
    assert _predicted_rows(lake, sha) == sorted(set(range(600)) - INVALID)  # still each row once
    assert _waiting(lake) == {(sha, row) for row in INVALID}
