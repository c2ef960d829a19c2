"""The fault ledger: when this experiment run started, and when each fault went in and came out.

Chaos Toolkit passes nothing from one activity to the next, so a recovery probe in
the steady-state hypothesis cannot see when the method injected its fault. The
ledger is a JSON-lines file (its path is the ``selfheal_ledger`` configuration key)
where the experiment control (``chaos.control``) marks the start of each run and,
before the rollbacks undo the fault, what became of the landing files; the fault
actions record what they did::

    {"event": "run", "at": 1718000000.1, "experiment": "Kill a serving worker"}
    {"event": "fault", "at": 1718000003.4, "fault": "kill_worker", "detail": {"pid": 4242}}
    {"event": "restore", "at": 1718000020.0, "fault": "restore_link", "detail": {}}
    {"event": "accounted", "at": 1718000021.0, "detail": {"rows_lost": 0, "rows_awaiting": 1000, ...}}

Probes start their clock at the newest ``fault`` (or ``restore``) of the current run,
so the seconds they return are measured from injection, as the SLA says. Without a
ledger (an activity called on its own) nothing is recorded and clocks start "now".
One line per ``write`` with ``O_APPEND``: concurrent writers never interleave a line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LEDGER_KEY = "selfheal_ledger"
Event = Literal["run", "fault", "restore", "accounted"]
Since = Literal["fault", "restore", "now"]


@dataclass(frozen=True)
class Entry:
    """One line of the ledger."""

    event: str
    at: float
    fault: str = ""
    experiment: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def ledger_path(configuration: Mapping[str, Any] | None) -> Path | None:
    """The ledger file named by the configuration, if any."""
    value = (configuration or {}).get(LEDGER_KEY)
    return Path(str(value)) if value else None


def _append(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def record(
    configuration: Mapping[str, Any] | None,
    event: Event,
    *,
    fault: str = "",
    experiment: str = "",
    detail: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> float:
    """Append one entry (no-op without a ledger) and return its time (``at``: when it happened, default now)."""
    at = time.time() if at is None else at
    path = ledger_path(configuration)
    if path is not None:
        _append(
            path, {"event": event, "at": at, "fault": fault, "experiment": experiment, "detail": dict(detail or {})}
        )
    return at


def entries(path: Path) -> list[Entry]:
    """Every readable entry, oldest first (a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(
            Entry(
                str(raw.get("event", "")),
                float(raw.get("at", 0.0)),
                str(raw.get("fault", "")),
                str(raw.get("experiment", "")),
                dict(raw.get("detail") or {}),
            )
        )
    return out


def current_run(configuration: Mapping[str, Any] | None) -> list[Entry]:
    """Entries since the newest ``run`` mark (empty without a ledger or a mark)."""
    path = ledger_path(configuration)
    if path is None:
        return []
    found = entries(path)
    starts = [i for i, e in enumerate(found) if e.event == "run"]
    return found[starts[-1] :] if starts else []


def last_event(configuration: Mapping[str, Any] | None, event: str) -> float | None:
    """When the newest ``event`` (``fault`` or ``restore``) of this run happened, if one did."""
    times = [e.at for e in current_run(configuration) if e.event == event]
    return times[-1] if times else None


def last_fault(configuration: Mapping[str, Any] | None, *faults: str) -> dict[str, Any] | None:
    """The detail of this run's newest entry for any of ``faults`` (None when the run injected none)."""
    details = [e.detail for e in current_run(configuration) if e.fault in faults]
    return details[-1] if details else None


def since_event(configuration: Mapping[str, Any] | None, since: str) -> float | None:
    """When this run's newest ``since`` event happened; None for ``now`` or when there is none yet.

    Args:
        configuration: the experiment configuration (may name the ledger).
        since: ``fault`` (injection), ``restore`` (the fault was undone) or ``now``.
    """
    if since not in ("fault", "restore", "now"):
        raise ValueError(f"since must be 'fault', 'restore' or 'now', got {since!r}")
    return None if since == "now" else last_event(configuration, since)


def clock_start(configuration: Mapping[str, Any] | None, since: str = "fault") -> float:
    """When a probe's clock starts: the newest ``since`` event of this run (see ``since_event``), else now."""
    found = since_event(configuration, since)
    return found if found is not None else time.time()
