"""The incident log: every state transition of every incident, appended to Delta.

The log *is* the healer's state: a healer that dies mid-repair is replaced by
the next tick, which reads the log and resumes where the last row says. Rows
are appended exactly once (key = incident id + sequence number), so two
healers can never both record the same step.

States::

    DETECTED -> DIAGNOSED -> HEALING -> VERIFYING -> RESOLVED
                    ^  |                    |
                    |  +-> AWAITING_APPROVAL (a person approves or vetoes the remedy)
                    +---- next remedy ------+          (list exhausted) -> ESCALATED

MTTR = resolved_at - detected_at (detection time: when the monitor's evidence
arrived, not when the fault happened; the chaos suite reports from injection).
"""

from __future__ import annotations

import os
import socket
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pyarrow as pa

from checkpoints.lake import Lake
from checkpoints.rows import arrow_schema, from_row, to_row, to_table
from checkpoints.scan import Tail

INCIDENTS = "incidents"
#: Evidence flag of a HEALING row that records a wait (the remedy could not act yet): not a new attempt.
WAITING = "waiting"


class State(StrEnum):
    """Where an incident is."""

    DETECTED = "DETECTED"
    DIAGNOSED = "DIAGNOSED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    HEALING = "HEALING"
    VERIFYING = "VERIFYING"
    RESOLVED = "RESOLVED"
    ESCALATED = "ESCALATED"

    @property
    def closed(self) -> bool:
        return self in (State.RESOLVED, State.ESCALATED)


def actor() -> str:
    """Who writes: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_incident_id(now: datetime | None = None) -> str:
    """A fresh incident id: time of detection plus a random suffix."""
    return f"inc-{now or datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Transition:
    """One row of the log."""

    incident_id: str
    seq: int
    cause: str
    state: State
    ts: datetime
    detected_at: datetime
    remedy: str | None = None
    attempt: int = 0
    actor: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    mttr_seconds: float | None = None

    def to_row(self) -> dict[str, Any]:
        return to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Transition:
        return from_row(cls, row)


SCHEMA = arrow_schema(Transition)


@dataclass(frozen=True)
class Incident:
    """An incident as its transitions tell it."""

    transitions: tuple[Transition, ...]

    @property
    def id(self) -> str:
        return self.transitions[0].incident_id

    @property
    def cause(self) -> str:
        return self.transitions[0].cause

    @property
    def last(self) -> Transition:
        return self.transitions[-1]

    @property
    def state(self) -> State:
        return self.last.state

    @property
    def detected_at(self) -> datetime:
        return self.transitions[0].detected_at

    @property
    def resolved_at(self) -> datetime | None:
        """When it closed (RESOLVED or ESCALATED; an acknowledgement later does not move it)."""
        return next((t.ts for t in self.transitions if t.state.closed), None)

    @property
    def mttr_seconds(self) -> float | None:
        return self.last.mttr_seconds if self.state == State.RESOLVED else None

    @property
    def evidence(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for t in self.transitions:
            if t.state in (State.DETECTED, State.DIAGNOSED):
                merged.update(t.evidence)
        return merged

    def attempts(self, remedy: str) -> int:
        """How many times ``remedy`` was started for this incident."""
        started = [t for t in self.transitions if t.state == State.HEALING and not t.evidence.get(WAITING)]
        return sum(1 for t in started if t.remedy == remedy)

    @property
    def remedies_tried(self) -> list[str]:
        tried: list[str] = []
        for t in self.transitions:
            if t.state == State.HEALING and t.remedy and t.remedy not in tried:
                tried.append(t.remedy)
        return tried

    @property
    def acknowledged(self) -> bool:
        """A person (or the chaos suite, between experiments) has taken this escalation over."""
        return any(t.evidence.get("acknowledged") for t in self.transitions if t.state == State.ESCALATED)

    @property
    def proposal(self) -> Transition | None:
        """The AWAITING_APPROVAL row that proposed the remedy now waiting, if one waits."""
        for t in reversed(self.transitions):
            if t.state != State.AWAITING_APPROVAL:
                return None
            if t.evidence.get("proposed"):
                return t
        return None

    @property
    def approved(self) -> str | None:
        """The remedy a person approved for the proposal waiting now (None: not yet)."""
        proposal = self.proposal
        if proposal is None:
            return None
        later = [t for t in self.transitions if t.seq > proposal.seq and t.evidence.get("approved")]
        return str(later[-1].evidence["approved"]) if later else None

    @property
    def failed_remedies(self) -> list[str]:
        """Remedies whose verification failed (or which could not be applied)."""
        return [
            t.remedy
            for t in self.transitions
            if t.state == State.DIAGNOSED and t.remedy and t.detail.startswith("failed")
        ]


class IncidentLog:
    """Read and append incident transitions in the lake.

    Example:
        >>> log = IncidentLog(lake)
        >>> inc = log.open("data_drift", {"features": ["amount"]})
        >>> log.advance(inc, State.DIAGNOSED, evidence={...})
    """

    def __init__(self, lake: Lake, table: str = INCIDENTS) -> None:
        self.lake = lake
        self.table = table
        self._tail = Tail(lake, table)
        self._rows: dict[str, list[Transition]] = {}
        self._sorted: list[Incident] = []

    def incidents(self) -> list[Incident]:
        """Every incident, oldest first.

        Read again only when the table has a new version, and then only its new files:
        the healer asks several times a tick, and a log read whole at every append would
        make every tick (and so every MTTR) slower as the history grows.
        """
        if not self.lake.exists(self.table):
            return []
        found = self._tail.added()
        if found is not None:
            rows, reset = found
            if reset:
                self._rows = {}
            self._add(rows)
        return list(self._sorted)

    def _add(self, table: pa.Table) -> None:
        if "seq" not in table.column_names:  # a writer that keeps no sequence number: time orders the steps
            table = table.sort_by("ts")
            start = sum(len(ts) for ts in self._rows.values())
            table = table.append_column("seq", pa.array(range(start, start + table.num_rows), pa.int64()))
        touched = set()
        for row in table.to_pylist():
            self._rows.setdefault(row["incident_id"], []).append(Transition.from_row(row))
            touched.add(row["incident_id"])
        for incident_id in touched:
            self._rows[incident_id].sort(key=lambda t: t.seq)
        grouped = [Incident(tuple(ts)) for ts in self._rows.values()]
        self._sorted = sorted(grouped, key=lambda i: (i.detected_at, i.id))

    def get(self, incident_id: str) -> Incident | None:
        return next((i for i in self.incidents() if i.id == incident_id), None)

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents() if not i.state.closed]

    def open_for(self, cause: str) -> Incident | None:
        for incident in self.open_incidents():
            if incident.cause == cause:
                return incident
        return None

    def open(
        self,
        cause: str,
        evidence: dict[str, Any],
        detected_at: datetime | None = None,
        incident_id: str | None = None,
    ) -> Incident:
        """Start an incident (DETECTED); ``incident_id`` from ``new_incident_id()`` when it was claimed first."""
        now = datetime.now(UTC)
        first = Transition(
            incident_id=incident_id or new_incident_id(now),
            seq=0,
            cause=cause,
            state=State.DETECTED,
            ts=now,
            detected_at=detected_at or now,
            actor=actor(),
            evidence=evidence,
            detail="detected",
        )
        self._append(first)
        return Incident((first,))

    def advance(
        self,
        incident: Incident,
        state: State,
        *,
        remedy: str | None = None,
        attempt: int = 0,
        evidence: dict[str, Any] | None = None,
        detail: str = "",
    ) -> Incident | None:
        """Append the next transition; None when another healer already wrote this step."""
        now = datetime.now(UTC)
        mttr = (now - incident.detected_at).total_seconds() if state == State.RESOLVED else None
        row = Transition(
            incident_id=incident.id,
            seq=incident.last.seq + 1,
            cause=incident.cause,
            state=state,
            ts=now,
            detected_at=incident.detected_at,
            remedy=remedy,
            attempt=attempt,
            actor=actor(),
            evidence=evidence or {},
            detail=detail,
            mttr_seconds=mttr,
        )
        if not self._append(row):
            return None
        return Incident((*incident.transitions, row))

    def acknowledge(self, incident: Incident, by: str, note: str = "") -> Incident | None:
        """Record that ``by`` has taken an escalated incident over.

        The incident stays ESCALATED (its record is unchanged); its cause no longer
        waits out ``healing.escalation_hold_seconds``, so the next fault of that
        cause opens a new incident at once. None when it was acknowledged already.
        """
        if incident.state != State.ESCALATED:
            raise ValueError(f"{incident.id} is {incident.state.value}: only an ESCALATED incident is acknowledged")
        if incident.acknowledged:
            return None
        detail = f"acknowledged by {by}" + (f": {note}" if note else "")
        return self.advance(incident, State.ESCALATED, evidence={"acknowledged": True, "by": by}, detail=detail)

    def approve(self, incident_id: str, by: str, remedy: str | None = None) -> Incident:
        """A person lets the proposed remedy (or ``remedy`` instead) run.

        Raises:
            ValueError: the incident does not wait for an approval.
        """
        for _ in range(5):  # the healer may write a row in between: read again and retry
            incident = self._must_get(incident_id)
            proposal = incident.proposal
            if proposal is None or incident.state != State.AWAITING_APPROVAL:
                raise ValueError(f"{incident_id} is {incident.state.value}: it waits for no approval")
            chosen = remedy or str(proposal.evidence["proposed"])
            evidence = {"approved": chosen, "by": by}
            step = self.advance(
                incident, State.AWAITING_APPROVAL, remedy=chosen, evidence=evidence, detail=f"{chosen} approved by {by}"
            )
            if step is not None:
                return step
        raise ValueError(f"{incident_id}: could not record the approval (the log kept changing)")

    def _must_get(self, incident_id: str) -> Incident:
        incident = self.get(incident_id)
        if incident is None:
            raise ValueError(f"no incident {incident_id!r} (see `selfheal incidents`)")
        return incident

    def _append(self, row: Transition) -> bool:
        table = to_table([row])
        return not self.lake.append_once(self.table, table, key=f"incident:{row.incident_id}:{row.seq}").duplicate


@dataclass(frozen=True)
class CauseSummary:
    cause: str
    count: int
    resolved: int
    escalated: int
    median_mttr: float | None
    max_mttr: float | None


def summarize(incidents: list[Incident]) -> list[CauseSummary]:
    """Per cause: count, outcomes, median and max MTTR of the resolved ones."""
    out = []
    for cause in sorted({i.cause for i in incidents}):
        mine = [i for i in incidents if i.cause == cause]
        mttrs = [i.mttr_seconds for i in mine if i.mttr_seconds is not None]
        out.append(
            CauseSummary(
                cause,
                len(mine),
                sum(i.state == State.RESOLVED for i in mine),
                sum(i.state == State.ESCALATED for i in mine),
                statistics.median(mttrs) if mttrs else None,
                max(mttrs) if mttrs else None,
            )
        )
    return out


def _quality(incident: Incident) -> Any:
    return next((t.evidence["quality"] for t in reversed(incident.transitions) if "quality" in t.evidence), None)


def to_report(incident: Incident) -> dict[str, Any]:
    """One incident as the ``selfheal incidents --json`` record."""
    return {
        "incident_id": incident.id,
        "cause": incident.cause,
        "state": incident.state.value,
        "remedies_tried": incident.remedies_tried,
        "detected_at": incident.detected_at.isoformat(),
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "mttr_seconds": incident.mttr_seconds,
        "evidence": incident.evidence,
        "outcome": incident.last.detail,
        # A drift incident's quality before, after the drift and after the repair (the newest record of it).
        "quality": _quality(incident),
    }
