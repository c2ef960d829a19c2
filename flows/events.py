"""Best-effort Prefect events: what deployment triggers match, never what a run depends on.

The healer's transitions (``selfheal.incident.<state>``), the release controller's
(``selfheal.release.<what>``) and the monitor's signals (``selfheal.signal.<kind>``)
are announced as Prefect events; ``deployments/prefect.yaml`` triggers match them. The
state itself is in the lake and the registry, so an event that cannot be sent is
reported (a warning, once per event name) and the caller goes on.

Events go to the Prefect API the process is configured with (``PREFECT_API_URL``), or
to the server of the flow run in progress. With neither, they are not sent: Prefect
would start its ephemeral server (7-13 s, a child process) for events that no
deployment trigger can see once the process exits. ``local_server_events()`` asks for
that server anyway (``selfheal monitor|heal --prefect``).

Example:
    >>> emit("selfheal.signal.data_drift", "selfheal.signal.data_drift", payload, labels={"selfheal.severity": "high"})
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.exceptions import EventTooLarge
from prefect.settings import PREFECT_API_URL

logger = logging.getLogger(__name__)

#: Event names whose failure was reported at WARNING already (later ones go to DEBUG).
_warned: set[str] = set()
#: ``local_server_events()`` is active: send even without an API (Prefect starts its ephemeral server).
_local_server = False


@contextmanager
def local_server_events() -> Iterator[None]:
    """Send the enclosed events even when no Prefect API is configured (Prefect's ephemeral server)."""
    global _local_server
    before, _local_server = _local_server, True
    try:
        yield
    finally:
        _local_server = before


def prefect_api_configured() -> bool:
    """Is a Prefect API set (``PREFECT_API_URL``: environment, profile or prefect.toml)?"""
    return bool(PREFECT_API_URL.value())


def events_on() -> bool:
    """Is there a Prefect server to send events to without starting one (or was one asked for)?"""
    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    return _local_server or in_run or prefect_api_configured()


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
        False when events are off (see ``events_on``) or the event could not be sent.
    """
    if not events_on():
        logger.debug("event %s not sent: no Prefect API configured", event)
        return False
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
