"""Healer probes: the incident log in the lake says a fault was detected, repaired and verified.

The healer appends one row per state transition to the ``incidents`` Delta table;
the log is read here through its one definition, ``checkpoints.incidents``.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import json
import time
from pathlib import Path

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, poll_until
from checkpoints.incidents import INCIDENTS, Incident, IncidentLog, State
from checkpoints.lake import Lake

__all__ = [
    "open_incidents",
    "seconds_incident_stays_open",
    "seconds_until_incident_names_fault",
    "seconds_until_incident_resolved",
    "seconds_until_incident_resolved_after_restore",
]

#: Clock skew allowed between the chaos process and the healer when matching an incident to a fault.
_SKEW_SECONDS = 1.0


def _incidents(lake_root: str, table: str) -> list[Incident]:
    return IncidentLog(Lake(lake_root), table).incidents()


def _mine(lake_root: str, table: str, cause: str, fault_at: float) -> list[Incident]:
    since = fault_at - _SKEW_SECONDS
    return [i for i in _incidents(lake_root, table) if i.cause == cause and i.detected_at.timestamp() >= since]


def _states(incidents: list[Incident]) -> str:
    return "; ".join(f"{i.id} {i.state.value}" for i in incidents)


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
        mine = _mine(lake_root, table, cause, fault_at)
        if not mine:
            return Check(False, f"no {cause} incident detected since the fault")
        for incident in mine:
            if incident.state == State.RESOLVED and incident.resolved_at is not None:
                resolved_at.append(incident.resolved_at.timestamp())
                return Check(True, f"{incident.id} RESOLVED")
        escalated = [i for i in mine if i.state == State.ESCALATED]
        if escalated and len(escalated) == len(mine):
            return Check(False, f"{escalated[-1].id} ESCALATED: {escalated[-1].last.detail}", fatal=True)
        return Check(False, _states(mine))

    def look_steady() -> Check:
        still = [i for i in _incidents(lake_root, table) if i.cause == cause and not i.state.closed]
        return Check(not still, _states(still) or f"no open {cause} incident")

    if fault_at is None:
        poll_until(look_steady, timeout=timeout, what=f"no open {cause} incident", started_at=ledger.clock_start(None))
        return 0.0
    what = f"{cause} incident RESOLVED"
    poll_until(look_after_fault, timeout=timeout, what=what, started_at=fault_at, interval=interval)
    return max(0.0, resolved_at[-1] - fault_at)


def _closed_at(incident: Incident) -> float | None:
    closed = incident.resolved_at
    return closed.timestamp() if closed is not None else None


def seconds_incident_stays_open(
    lake_root: str,
    cause: str,
    hold_seconds: float,
    detect_seconds: float = 20.0,
    table: str = INCIDENTS,
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """While a fault persists: an incident of the cause opens and stays open until ``hold_seconds`` after the fault.

    Fails as soon as none opened within ``detect_seconds`` of the fault, or one closed
    (RESOLVED or ESCALATED) while the fault was still there: a repair verified against a
    fault that is still in place is a false verification. Returns the seconds the
    incident was seen open (from its detection to the end of the hold).
    """
    fault_at = ledger.last_event(configuration, "fault")
    if fault_at is None:
        raise ActivityFailed("no fault recorded in this run: nothing to stay open for")
    hold_until = fault_at + hold_seconds
    opened: list[float] = []

    def look() -> Check:
        mine = _mine(lake_root, table, cause, fault_at)
        closed = [i for i in mine if i.state.closed]
        if closed:
            return Check(False, f"{closed[0].id} {closed[0].state.value} while the fault persists", fatal=True)
        if not mine:
            late = time.time() - fault_at > detect_seconds
            return Check(False, f"no {cause} incident within {detect_seconds:g} s of the fault", fatal=late)
        opened[:] = [min(i.detected_at.timestamp() for i in mine)]
        return Check(time.time() >= hold_until, _states(mine))

    what = f"{cause} incident open for {hold_seconds:g} s of fault"
    poll_until(look, timeout=hold_seconds + interval * 3, what=what, started_at=fault_at, interval=interval)
    return round(time.time() - opened[0], 2)


def seconds_until_incident_resolved_after_restore(
    lake_root: str,
    cause: str,
    timeout: float = 60.0,
    remedy: str | None = None,
    table: str = INCIDENTS,
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the incident of the cause opened during the fault is RESOLVED after the fault was undone.

    For a fault the scenario itself takes back (an outage that ends): the incident must
    have been detected after the fault and before this run's ``restore`` (it may be written
    later: the healer records an outage of the lake's store once it answers again, detected
    when its first tick failed), stayed open until the restore (closing before it fails at
    once), then be RESOLVED (by ``remedy``, if given). Returns the seconds
    from the restore to RESOLVED; ESCALATED fails at once. Before any fault in this run
    it waits until no incident of the cause is open and returns 0.
    """
    fault_at, restored_at = ledger.last_event(configuration, "fault"), ledger.last_event(configuration, "restore")
    if fault_at is None:
        return seconds_until_incident_resolved(lake_root, cause, timeout, table, interval, configuration)
    if restored_at is None or restored_at < fault_at:
        raise ActivityFailed(f"the fault of this run was not undone: no {cause} resolution after a restore to measure")
    resolved_at: list[float] = []

    def look() -> Check:
        mine = _mine(lake_root, table, cause, fault_at)
        during = [i for i in mine if i.detected_at.timestamp() <= restored_at]
        if not during:  # not yet: an outage of the lake's own store is written once the store is back
            return Check(False, f"no {cause} incident detected between the fault and the restore")
        early = [i for i in during if (_closed_at(i) or restored_at) < restored_at]
        if early:
            return Check(False, f"{early[0].id} {early[0].state.value} before the fault was undone", fatal=True)
        for incident in during:
            if incident.state == State.ESCALATED:
                return Check(False, f"{incident.id} ESCALATED: {incident.last.detail}", fatal=True)
            if incident.state == State.RESOLVED and remedy not in (None, incident.last.remedy):
                return Check(False, f"{incident.id} RESOLVED by {incident.last.remedy}, not {remedy}", fatal=True)
            if incident.state == State.RESOLVED:
                resolved_at.append(_closed_at(incident) or time.time())
                return Check(True, f"{incident.id} RESOLVED by {incident.last.remedy}: {incident.last.detail}")
        return Check(False, _states(during))

    what = f"{cause} incident RESOLVED after the restore"
    poll_until(look, timeout=timeout, what=what, started_at=restored_at, interval=interval)
    return round(max(0.0, resolved_at[-1] - restored_at), 2)


def seconds_until_incident_names_fault(
    lake_root: str,
    cause: str,
    timeout: float = 60.0,
    table: str = INCIDENTS,
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until an incident of the cause, detected since the fault, is closed naming every file the fault landed.

    Closed: RESOLVED (a remedy repaired it) or ESCALATED (a person must act; the honest
    outcome for a batch no remedy can repair). Naming: each file's name appears in the
    incident's evidence, so the person knows which batch is waiting. Returns the seconds
    from the fault to the closing transition. Before any fault it waits, as
    ``seconds_until_incident_resolved`` does, until no incident of the cause is open.
    """
    fault_at = ledger.last_event(configuration, "fault")
    if fault_at is None:  # the steady state before the method
        return seconds_until_incident_resolved(lake_root, cause, timeout, table, interval, configuration)
    faults = [e for e in ledger.current_run(configuration) if e.event == "fault"]
    names = sorted({Path(p).name for e in faults for p in e.detail.get("paths", [])})
    if not names:
        raise ActivityFailed("the fault recorded no landed file for an incident to name")
    closed_at: list[float] = []

    def look() -> Check:
        mine = _mine(lake_root, table, cause, fault_at)
        for incident in mine:
            evidence = json.dumps([[t.evidence, t.detail] for t in incident.transitions], default=str)
            if incident.state.closed and all(name in evidence for name in names):
                closed_at.append(incident.last.ts.timestamp())
                return Check(True, f"{incident.id} {incident.state.value} naming {', '.join(names)}")
        seen = _states(mine) or f"no {cause} incident since the fault"
        return Check(False, f"{seen} (waiting for one closed naming {', '.join(names)})")

    what = f"{cause} incident closed naming the fault's files"
    poll_until(look, timeout=timeout, what=what, started_at=fault_at, interval=interval)
    return max(0.0, closed_at[-1] - fault_at)
