"""Healer actions: what a person on call does, and the healer's settings for one experiment.

``require_approval`` restarts the sandbox's healer with ``healing.approval`` set for some
remedies; ``approve_when_proposed`` plays the person who reads the page, waits, then
approves (``selfheal incidents approve``); ``restore_healer`` puts the healer back on the
sandbox's config.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import json
import time
from pathlib import Path
from typing import Any

from chaoslib.types import Configuration

from chaos import ledger
from chaos.sandbox import Sandbox
from checkpoints.decisions import DecisionLog
from checkpoints.incidents import IncidentLog, State
from checkpoints.lake import Lake

__all__ = ["approve_when_proposed", "require_approval", "restore_healer"]


def require_approval(sandbox: str, remedies: list[str], configuration: Configuration | None = None) -> dict[str, Any]:
    """Restart the sandbox's healer with ``healing.approval`` set to ``approve`` for ``remedies``."""
    approval = json.dumps(dict.fromkeys(remedies, "approve"))
    pid = Sandbox(Path(sandbox)).restart_healer({"SELFHEAL_HEALING__APPROVAL": approval})
    return {"healer_pid": pid, "approval": approval}


def restore_healer(sandbox: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Restart the sandbox's healer on its config alone."""
    return {"healer_pid": Sandbox(Path(sandbox)).restart_healer()}


def approve_when_proposed(
    sandbox: str,
    lake_root: str,
    cause: str,
    remedy: str,
    after_seconds: float = 5.0,
    timeout: float = 60.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Wait for an incident of ``cause`` (opened since the fault) AWAITING_APPROVAL of ``remedy``; approve it
    ``after_seconds`` later, as a person would. Returns how long it waited for a person in all.

    Nothing awaiting approval within ``timeout``, or a sandbox whose healing is off (nothing
    will propose), is reported, not raised: the recovery probes judge the experiment.
    """
    state = Sandbox(Path(sandbox)).state()
    if state is not None and not state.healing_enabled:
        return {"approved": None, "note": "healing is off in the sandbox: no remedy is proposed"}
    fault_at = ledger.last_event(configuration, "fault")
    since = (fault_at if fault_at is not None else time.time()) - 1.0
    log = IncidentLog(Lake(lake_root))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [
            i
            for i in log.incidents()
            if i.cause == cause
            and i.detected_at.timestamp() >= since
            and i.state == State.AWAITING_APPROVAL
            and i.proposal is not None
            and i.proposal.evidence.get("proposed") == remedy
        ]
        if waiting:
            incident = waiting[0]
            proposed_at = incident.proposal.ts.timestamp()  # type: ignore[union-attr]
            time.sleep(max(0.0, proposed_at + after_seconds - time.time()))
            log.approve(incident.id, "chaos-suite", remedy)
            DecisionLog(Lake(lake_root)).say("approve", cause, remedy, "chaos-suite", incident_id=incident.id)
            return {
                "incident": incident.id,
                "approved": remedy,
                "awaited_approval_seconds": round(time.time() - proposed_at, 2),
            }
        time.sleep(0.5)
    return {"approved": None, "note": f"no {cause} incident awaited approval of {remedy} within {timeout:g} s"}
