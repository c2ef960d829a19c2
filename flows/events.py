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
that server anyway (``selfheal monitor|heal --prefect``). Prefect itself (2-3 s of
imports) is imported only when an event may be sent: a one-shot ``selfheal monitor``
or ``heal`` pass with no Prefect API in sight never loads it.

Example:
    >>> emit("selfheal.signal.data_drift", "selfheal.signal.data_drift", payload, labels={"selfheal.severity": "high"})
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def _may_set_prefect_api() -> bool:
    """Could any of Prefect's settings sources set ``PREFECT_API_URL``? False only when none can.

    Prefect reads its settings from the environment, ``.env``, ``prefect.toml`` and
    ``pyproject.toml`` ([tool.prefect]) in the working directory, and the active
    profile (``$PREFECT_PROFILES_PATH``, ``$PREFECT_HOME/profiles.toml`` or
    ``~/.prefect/profiles.toml``; Prefect's bundled default sets no API). When none of
    them mentions it, asking Prefect would only cost its import to hear "no".
    """
    if any(k in os.environ for k in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE")):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    for path, mark in (
        (Path(".env"), "PREFECT_"),
        (Path("prefect.toml"), ""),
        (Path("pyproject.toml"), "tool.prefect"),
        (home.expanduser() / "profiles.toml", "PREFECT_API_URL"),
    ):
        try:
            if path.is_file() and mark in path.read_text(errors="replace"):
                return True
        except OSError:  # unreadable: let Prefect decide, as it would have
            return True
    return False


def prefect_api_configured() -> bool:
    """Is a Prefect API set (``PREFECT_API_URL``: environment, profile or prefect.toml)?"""
    if "prefect.settings" not in sys.modules and not _may_set_prefect_api():
        return False  # (once Prefect is loaded, ask it: its settings may be set in-process)
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _in_prefect_run() -> bool:
    """Is this code running inside a Prefect flow or task run (never when Prefect is not imported)?"""
    if "prefect.context" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def events_on() -> bool:
    """Is there a Prefect server to send events to without starting one (or was one asked for)?"""
    return _local_server or _in_prefect_run() or prefect_api_configured()


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
    from prefect.exceptions import EventTooLarge

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


def emit_event(**event: Any) -> Any:
    """``prefect.events.emit_event``, imported on the first event actually sent."""
    from prefect.events import emit_event as send

    return send(**event)


def _report(event: str, reason: str) -> None:
    level = logging.DEBUG if event in _warned else logging.WARNING
    _warned.add(event)
    logger.log(level, "event %s not emitted (%s); triggers that match it will not fire", event, reason)
