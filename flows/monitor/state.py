"""The monitor's memory between runs, kept crash-safe in the lake.

A run's state (watermarks, detector states, streaks, series histories, last
scraped counters) is written as a JSON file under ``<lake>/_monitor/state/``
named by the run's sequence number, and only then are the run's metric rows
appended to the ``metrics`` table with idempotency key ``monitor:<seq>``. The
Delta commit is the pointer: the state in force is the file of the newest
``monitor:`` commit. A crash before the commit leaves the previous state in
force (the orphan file is overwritten by the retry); a crash after it leaves a
complete run. Two monitors racing from the same state both try ``monitor:<seq>``
and only one commit lands (run one monitor at a time: concurrency limit 1).

Example:
    >>> state = load_state(lake)
    >>> state.seq
    41
    >>> commit_run(lake, state.advanced(now), metric_rows)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from checkpoints import Lake
from checkpoints.exceptions import CheckpointError
from checkpoints.lake import KEY_METADATA
from checkpoints.metrics import METRICS_TABLE, append_metric_rows

logger = logging.getLogger(__name__)

KEY_PREFIX = "monitor:"
STATE_DIR = ("_monitor", "state")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class MonitorState:
    """Everything one monitor run hands to the next.

    Attributes:
        seq: runs committed so far (the next run commits ``seq + 1``).
        inference_watermark: inference-log rows up to this ``_ts`` were seen.
        drift_watermark: rows up to this ``_ts`` went into a drift window.
        feedback_watermark: feedback up to this ``ts`` fed the concept-drift detector.
        performance_watermark: feedback up to this ``ts`` was judged for performance.
        concept: model version -> ``ErrorCusum.to_dict()``.
        history: series name -> recent values (``SeriesHistory``).
        streaks: signal key -> windows in a row it has held.
        counters: last scraped cumulative serving counters.
        last_run: when the previous run ended.
    """

    seq: int = 0
    inference_watermark: datetime | None = None
    drift_watermark: datetime | None = None
    feedback_watermark: datetime | None = None
    performance_watermark: datetime | None = None
    concept: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    history: Mapping[str, Sequence[float]] = field(default_factory=dict)
    streaks: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, float] = field(default_factory=dict)
    last_run: datetime | None = None

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("inference_watermark", "drift_watermark", "feedback_watermark", "performance_watermark"):
            data[key] = _iso(getattr(self, key))
        data["last_run"] = _iso(self.last_run)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MonitorState:
        data = json.loads(text)
        for key in ("inference_watermark", "drift_watermark", "feedback_watermark", "performance_watermark"):
            data[key] = _dt(data.get(key))
        data["last_run"] = _dt(data.get("last_run"))
        return cls(**data)

    def evolve(self, **changes: Any) -> MonitorState:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


def _state_path(lake: Lake, seq: int) -> str:
    return lake.storage.join(*STATE_DIR, f"{seq:012d}.json")


def last_committed_seq(lake: Lake) -> int:
    """The sequence number of the newest committed monitor run (0 if none)."""
    if not lake.exists(METRICS_TABLE):
        return 0
    for limit in (100, None):  # other writers may share the table: look further only if needed
        for commit in lake.history(METRICS_TABLE, limit):
            key = str(commit.get(KEY_METADATA) or "")
            if key.startswith(KEY_PREFIX):
                return int(key.removeprefix(KEY_PREFIX))
    return 0


def load_state(lake: Lake) -> MonitorState:
    """The state of the newest committed run, or a fresh one."""
    seq = last_committed_seq(lake)
    if seq == 0:
        return MonitorState()
    path = _state_path(lake, seq)
    if not lake.storage.exists(path):
        logger.warning("monitor state file for run %d is missing; starting fresh from run %d", seq, seq)
        return MonitorState(seq=seq)
    return MonitorState.from_json(lake.storage.read_bytes(path).decode())


def commit_run(lake: Lake, state: MonitorState, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Persist ``state`` and append ``rows`` to ``metrics`` as run ``state.seq``, atomically.

    Returns:
        False when another monitor already committed this sequence number (nothing written).
    """
    if not rows:
        raise ValueError("a monitor run commits at least one metric row (its heartbeat)")
    lake.storage.write_bytes(_state_path(lake, state.seq), state.to_json().encode())
    try:
        result = append_metric_rows(lake, rows, key=f"{KEY_PREFIX}{state.seq}")
    except CheckpointError:
        logger.exception("monitor run %d: could not append metrics", state.seq)
        raise
    if result.duplicate:
        logger.warning(
            "monitor run %d was already committed by another monitor; this run's state is dropped", state.seq
        )
    return not result.duplicate


def now_utc() -> datetime:
    return datetime.now(UTC)
