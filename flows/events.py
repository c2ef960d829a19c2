"""Best-effort Prefect events: what deployment triggers match, never what a run depends on.

The healer's transitions (``selfheal.incident.<state>``), the release controller's
(``selfheal.release.<what>``) and the monitor's signals (``selfheal.signal.<kind>``)
are announced as Prefect events; ``deployments/prefect.yaml`` triggers match them. The
state itself is in the lake and the registry, so an event that cannot be sent is
reported (a warning, once per event name) and the caller goes on.

Example:
    >>> emit("selfheal.signal.data_drift", "selfheal.signal.data_drift", payload, labels={"selfheal.severity": "high"})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.events import emit_event
from prefect.exceptions import EventTooLarge

logger = logging.getLogger(__name__)

#: Event names whose failure was reported at WARNING already (later ones go to DEBUG).
_warned: set[str] = set()


def emit(
    event: str,
    resource_id: str,
    payload: Mapping[str, Any],
    related: Sequence[Mapping[str, str]] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
) -> bool:
    """Send one Prefect event; never raises. Whether it was sent.

    Args:
        event: the event name, e.g. ``selfheal.signal.data_drift``.
        resource_id: the ``prefect.resource.id`` of the resource it is about.
        payload: what happened (JSON-serializable).
        related: other resources involved, each with its ``prefect.resource.id`` and ``prefect.resource.role``.
        labels: more labels of the resource (triggers may match them, e.g. ``selfheal.severity``).

    Returns:
        False when events are off (no Prefect API configured) or the event could not be sent.
    """
    resource = {"prefect.resource.id": resource_id, **(labels or {})}
    try:
        sent = emit_event(
            event=event,
            resource=resource,
            payload=dict(payload),
            related=[dict(r) for r in related] if related is not None else None,
        )
    except EventTooLarge as exc:  # the one failure emit_event raises; it logs every other one itself
        _report(event, f"too large: {exc}")
        return False
    return sent is not None


def _report(event: str, reason: str) -> None:
    level = logging.DEBUG if event in _warned else logging.WARNING
    _warned.add(event)
    logger.log(level, "event %s not emitted (%s); triggers that match it will not fire", event, reason)
