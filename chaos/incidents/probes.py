"""Healer probes: the incident log in the lake says a fault was detected, repaired and verified.

The healer appends one row per state transition to the ``incidents`` Delta table;
the log is read here through its one definition, ``checkpoints.incidents``.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, poll_until
from checkpoints.incidents import INCIDENTS, Incident, IncidentLog, State
from checkpoints.lake import Lake

__all__ = ["open_incidents", "seconds_until_incident_resolved"]

#: Clock skew allowed between the chaos process and the healer when matching an incident to a fault.
_SKEW_SECONDS = 1.0


def _incidents(lake_root: str, table: str) -> list[Incident]:
    return IncidentLog(Lake(lake_root), table).incidents()


def open_incidents(lake_root: str, cause: str | None = None, table: str = INCIDENTS) -> int:
    """How many incidents (of the cause, if given) are neither RESOLVED nor ESCALATED."""
    return sum(1 for i in _incidents(lake_root, table) if not i.state.closed and cause in (None, i.cause))


def seconds_until_incident_resolved(
    lake_root: str,
    cause: str,
    timeout: float = 60.0,
    table: str = INCIDENTS,
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
        since = fault_at - _SKEW_SECONDS
        mine = [i for i in _incidents(lake_root, table) if i.cause == cause and i.detected_at.timestamp() >= since]
        if not mine:
            return Check(False, f"no {cause} incident detected since the fault")
        for incident in mine:
            if incident.state == State.RESOLVED and incident.resolved_at is not None:
                resolved_at.append(incident.resolved_at.timestamp())
                return Check(True, f"{incident.id} RESOLVED")
        escalated = [i for i in mine if i.state == State.ESCALATED]
        if escalated and len(escalated) == len(mine):
            return Check(False, f"{escalated[-1].id} ESCALATED: {escalated[-1].last.detail}", fatal=True)
        return Check(False, "; ".join(f"{i.id} {i.state.value}" for i in mine))

    def look_steady() -> Check:
        still = [i for i in _incidents(lake_root, table) if i.cause == cause and not i.state.closed]
        return Check(not still, "; ".join(f"{i.id} {i.state.value}" for i in still) or f"no open {cause} incident")

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
