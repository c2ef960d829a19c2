"""Healer probes: the incident log in the lake says a fault was detected, repaired and verified.

The healer appends one row per state transition to the ``incidents`` Delta table
(``incident_id``, ``cause``, ``state``, ``ts``, ``detected_at``, ..., ``mttr_seconds``).
An incident's state is the one on its newest row.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from dataclasses import dataclass
from datetime import datetime

from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, poll_until

__all__ = ["open_incidents", "seconds_until_incident_resolved"]

CLOSED = ("RESOLVED", "ESCALATED")
#: Clock skew allowed between the chaos process and the healer when matching an incident to a fault.
_SKEW_SECONDS = 1.0


@dataclass(frozen=True)
class _Incident:
    incident_id: str
    cause: str
    state: str
    detected_at: float
    last_ts: float
    detail: str


def _incidents(lake_root: str, table: str) -> list[_Incident]:
    from checkpoints import Lake

    lake = Lake(lake_root)
    if not lake.exists(table):
        return []
    rows = lake.read(table).to_pylist()
    latest: dict[str, dict[str, object]] = {}
    # The newest transition wins: by time, then by sequence number where the log has one.
    for row in sorted(rows, key=lambda r: (r["ts"], int(r.get("seq") or 0))):
        latest[str(row["incident_id"])] = row
    out = []
    for row in latest.values():
        detected, ts = row["detected_at"], row["ts"]
        assert isinstance(detected, datetime) and isinstance(ts, datetime)
        out.append(
            _Incident(
                str(row["incident_id"]),
                str(row["cause"]),
                str(row["state"]),
                detected.timestamp(),
                ts.timestamp(),
                str(row["detail"] or ""),
            )
        )
    return sorted(out, key=lambda i: i.detected_at)


def open_incidents(lake_root: str, cause: str | None = None, table: str = "incidents") -> int:
    """How many incidents (of the cause, if given) are neither RESOLVED nor ESCALATED."""
    return sum(1 for i in _incidents(lake_root, table) if i.state not in CLOSED and cause in (None, i.cause))


def seconds_until_incident_resolved(
    lake_root: str,
    cause: str,
    timeout: float = 60.0,
    table: str = "incidents",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until an incident of the cause detected since this run's fault is RESOLVED; return seconds from the fault.

    The seconds are the incident's RESOLVED time minus the injection time (the MTTR
    measured from injection). An ESCALATED incident fails at once. Before any fault
    in this run, it waits until no incident of the cause is open and returns 0.
    """
    fault_at = ledger.last_event(configuration, "fault")
    resolved_at: list[float] = []

    def look_after_fault() -> Check:
        assert fault_at is not None
        mine = [
            i for i in _incidents(lake_root, table) if i.cause == cause and i.detected_at >= fault_at - _SKEW_SECONDS
        ]
        if not mine:
            return Check(False, f"no {cause} incident detected since the fault")
        for incident in mine:
            if incident.state == "RESOLVED":
                resolved_at.append(incident.last_ts)
                return Check(True, f"{incident.incident_id} RESOLVED")
        escalated = [i for i in mine if i.state == "ESCALATED"]
        if escalated and len(escalated) == len(mine):
            return Check(False, f"{escalated[-1].incident_id} ESCALATED: {escalated[-1].detail}", fatal=True)
        return Check(False, "; ".join(f"{i.incident_id} {i.state}" for i in mine))

    def look_steady() -> Check:
        still = [i for i in _incidents(lake_root, table) if i.cause == cause and i.state not in CLOSED]
        return Check(not still, "; ".join(f"{i.incident_id} {i.state}" for i in still) or f"no open {cause} incident")

    if fault_at is None:
        poll_until(look_steady, timeout=timeout, what=f"no open {cause} incident", started_at=ledger.clock_start(None))
        return 0.0
    poll_until(
        look_after_fault,
        timeout=timeout,
        what=f"{cause} incident RESOLVED",
        started_at=fault_at,
        interval=interval,
    )
    return max(0.0, resolved_at[-1] - fault_at)
