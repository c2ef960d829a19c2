"""Incident leases: one healer at a time repairs an incident.

A lease is a row in ``_incident_leases`` appended exactly once per (incident, n):
two processes racing for the same incident both try lease ``n`` and only one
commit lands. A lease lasts ``LEASE_SECONDS``; a holder that died on this host
(its pid is gone) is taken over at once, one on another host when it expires.

Example:
    >>> if claim(lake, incident.id, datetime.now(UTC)):
    ...     heal(incident)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from checkpoints.lake import Lake
from checkpoints.rows import from_row, to_table
from checkpoints.scan import Tail

LEASES = "_incident_leases"
LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class Lease:
    """Who holds an incident until when (``n`` counts the incident's leases)."""

    incident_id: str
    n: int
    host: str
    pid: int
    expires_at: datetime

    @property
    def mine(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    @property
    def holder_alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another machine: trust the expiry time
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


#: Per lease table (by URI), in this process: its tail and the newest lease row of each incident.
_NEWEST: dict[str, tuple[Tail, dict[str, dict[str, Any]]]] = {}


def current_lease(lake: Lake, incident_id: str) -> Lease | None:
    """The newest lease taken on ``incident_id`` (None: never claimed).

    The table is read as it grows (``Tail``): a healer claims every open incident at every
    tick, and one lease row per incident ever would make each claim slower with the history.
    """
    if not lake.exists(LEASES):
        return None
    tail, newest = _NEWEST.setdefault(lake.uri(LEASES), (Tail(lake, LEASES), {}))
    found = tail.added()
    if found is not None:
        rows, reset = found
        if reset:
            newest.clear()
        for row in rows.to_pylist():
            held = newest.get(row["incident_id"])
            if held is None or row["n"] > held["n"]:
                newest[row["incident_id"]] = row
    row = newest.get(incident_id)
    return from_row(Lease, row) if row else None


def take(lake: Lake, lease: Lease) -> bool:
    """Append ``lease``; False when another process took lease ``n`` of the incident first."""
    key = f"lease:{lease.incident_id}:{lease.n}"
    return not lake.append_once(LEASES, to_table([lease]), key=key).duplicate


def claim(lake: Lake, incident_id: str, now: datetime) -> bool:
    """Hold the incident for this process; False when a live healer holds it."""
    latest = current_lease(lake, incident_id)
    if latest is not None:
        if latest.mine and latest.expires_at > now:
            return True
        if latest.expires_at > now and latest.holder_alive:
            return False
    n = latest.n + 1 if latest else 0
    expires = now + timedelta(seconds=LEASE_SECONDS)
    return take(lake, Lease(incident_id, n, socket.gethostname(), os.getpid(), expires))
