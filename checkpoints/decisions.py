"""The decisions log: every remedy choice and every human say on one, appended to Delta.

It lives beside the incident log and is what the learned policy trains on
(``flows.healer.policy``). Kinds of row:

* ``remedy``: the healer chose a remedy for an incident. Written when the incident
  closes, so its outcome is known: ``resolved`` (this or a later remedy of the
  incident was verified), ``escalated``; ``seconds`` runs from the choice to the
  verified recovery (for the first choice of an incident, from detection: its MTTR).
* ``approve`` / ``veto``: a person let a remedy run, or forbade it for an incident (the
  healer reads vetoes from here: a vetoed remedy is never started for that incident).
* ``pin`` / ``unpin``: a person fixed the remedy of a cause (the newest row of a cause wins).

``propensity`` is the probability the chooser gave the chosen remedy (1.0 for the
rules, a pin or a person; below 1 when the sandbox explored): off-policy evaluation
weighs each logged outcome by its inverse. Rows are appended exactly once
(key = ``decision_id``).

Example:
    >>> log = DecisionLog(lake)
    >>> log.pin("data_drift", "rollback", by="ana")
    >>> log.pins()
    {'data_drift': 'rollback'}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from checkpoints.lake import Lake
from checkpoints.rows import from_row, to_table
from checkpoints.scan import Tail

DECISIONS = "decisions"

Kind = Literal["remedy", "approve", "veto", "pin", "unpin"]
Chooser = Literal["rules", "learned", "person"]


@dataclass(frozen=True)
class Decision:
    """One row of the log."""

    decision_id: str
    kind: Kind
    cause: str
    decided_at: datetime
    chooser: Chooser
    chosen: str | None = None
    incident_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    """The policy's context features when it chose (``flows.healer.policy.features``)."""
    candidates: list[str] = field(default_factory=list)
    """The remedies the rules allowed then (the safety envelope)."""
    propensity: float = 1.0
    explored: bool = False
    """The choice was a random one (exploration inside the chaos sandbox)."""
    outcome: str = ""
    """``resolved`` or ``escalated`` (remedy rows); empty for the other kinds."""
    seconds: float | None = None
    """From the choice to the incident's verified recovery (None: it escalated)."""
    mttr_seconds: float | None = None
    """The incident's MTTR (None: it escalated)."""
    cost: float = 0.0
    by: str = ""
    note: str = ""


class DecisionLog:
    """Read and append decisions in the lake."""

    def __init__(self, lake: Lake, table: str = DECISIONS) -> None:
        self.lake = lake
        self.table = table
        self._tail = Tail(lake, table)
        self._rows: list[Decision] = []

    def decisions(self, kind: Kind | None = None) -> list[Decision]:
        """Every decision (of ``kind``), oldest first (a new version's new files are the only ones read)."""
        if not self.lake.exists(self.table):
            return []
        found = self._tail.added()
        if found is not None:
            rows, reset = found
            added = [from_row(Decision, r) for r in rows.to_pylist()]
            self._rows = sorted((added if reset else [*self._rows, *added]), key=lambda d: d.decided_at)
        return [d for d in self._rows if kind is None or d.kind == kind]

    def has(self, decision_id: str) -> bool:
        return self.lake.exists(self.table) and self.lake.has_key(self.table, _key(decision_id))

    def append(self, decision: Decision) -> bool:
        """Append ``decision`` once; False when its id was logged already."""
        result = self.lake.append_once(self.table, to_table([decision]), key=_key(decision.decision_id))
        return not result.duplicate

    def pins(self) -> dict[str, str]:
        """cause -> pinned remedy (the newest pin or unpin of each cause decides)."""
        pinned: dict[str, str] = {}
        for d in self.decisions():
            if d.kind == "pin" and d.chosen:
                pinned[d.cause] = d.chosen
            elif d.kind == "unpin":
                pinned.pop(d.cause, None)
        return pinned

    def vetoed(self, incident_id: str) -> set[str]:
        """Remedies a person forbade for ``incident_id``."""
        return {d.chosen for d in self.decisions("veto") if d.incident_id == incident_id and d.chosen}

    def pin(self, cause: str, remedy: str, by: str, note: str = "") -> Decision:
        return self.say("pin", cause, remedy, by, note)

    def unpin(self, cause: str, by: str, note: str = "") -> Decision:
        return self.say("unpin", cause, None, by, note)

    def say(
        self, kind: Kind, cause: str, remedy: str | None, by: str, note: str = "", incident_id: str | None = None
    ) -> Decision:
        """Log what a person decided (a pin, an approval, a veto)."""
        now = datetime.now(UTC)
        about = incident_id or cause
        row = Decision(
            f"{kind}:{about}:{remedy or '-'}:{now.isoformat()}",
            kind,
            cause,
            now,
            "person",
            remedy,
            incident_id=incident_id,
            by=by,
            note=note,
        )
        self.append(row)
        return row


def _key(decision_id: str) -> str:
    return f"decision:{decision_id}"
