"""Prefect settings for the flow runs selfheal starts in its own process.

The ``selfheal`` command (pipeline runs, the healer and its remedies, the demo, the
chaos suite) runs its flows in-process. For those, Prefect's flow-run heartbeats
are off unless you set them (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, the legacy
``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``, or a profile/``prefect.toml`` value):

* Prefect 3.9's heartbeat thread sleeps in one-second steps and every flow run
  waits for it to wake before returning, so each run ends up to a second late
  (an empty flow: 1.07 s with heartbeats, 0.10 s without, measured here). The
  healer's retrain remedy runs a pipeline flow inside an incident's MTTR.
* Heartbeats feed Prefect's zombie-flow detection (an automation on
  ``prefect.flow-run.heartbeat`` events). An in-process run does not need it: a
  pipeline run that dies leaves the lake behind the landing zone, the monitor's
  freshness signal opens a ``stale_data`` incident, and the healer's pipeline run
  resumes from the checkpoints.

Deployment runs started by a Prefect worker (``selfheal up``) do not pass through
here: their workers send heartbeats and ``up`` adds the automation that crashes a
run whose heartbeats stopped (``flows.local.stack``).

Commands that run a flow only sometimes (``selfheal monitor``, ``selfheal heal``: a
plain pass needs no Prefect, a retrain runs the pipeline flow) defer: Prefect is
imported, and the settings applied, by ``flow_settings()`` right before such a flow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

#: ``in_process_runs(defer=True)`` is active: ``flow_settings()`` applies the settings.
_deferred = False


def heartbeats_chosen() -> bool:
    """Did the user set the flow-run heartbeat (environment, profile or prefect.toml)?"""
    from prefect.settings import get_current_settings

    return "heartbeat_frequency" in get_current_settings().flows.model_fields_set


@contextmanager
def in_process_runs(defer: bool = False) -> Iterator[None]:
    """Run the enclosed flows without flow-run heartbeats, unless the user chose a frequency.

    Args:
        defer: do not import Prefect now (2-3 s); the flows run in the enclosed code
            enter ``flow_settings()`` and get the settings then.
    """
    global _deferred
    if defer:
        before, _deferred = _deferred, True
        try:
            yield
        finally:
            _deferred = before
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if heartbeats_chosen():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextmanager
def flow_settings() -> Iterator[None]:
    """Enclose a flow run started by code that may run under ``in_process_runs(defer=True)``.

    Under a deferred ``in_process_runs`` it applies the in-process settings; otherwise
    (a deployment run, a test, a command that applied them already) it changes nothing.
    """
    if not _deferred:
        yield
        return
    with in_process_runs():
        yield


def _transient(exc: BaseException) -> bool:
    """A busy SQLite server answers 503 (database locked) or drops the connection; both pass."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 503)
    return isinstance(exc, httpx.TransportError)


@retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(8),
    wait=wait_exponential_jitter(initial=0.25, max=4.0),
    reraise=True,
)
def prefect_api(method: str, url: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
    """One Prefect REST call; the decoded answer (None for an empty one, or a status listed in ``ok``)."""
    response = httpx.request(method, url, json=body, timeout=15.0)
    if response.status_code in ok:
        return None
    response.raise_for_status()
    return response.json() if response.content else None


def deployments(api_url: str, pool: str | None = None) -> list[dict[str, Any]]:
    """The server's deployments (``pool``'s only, when given), by name, each with its ``flow_name``
    and ``automations`` (those whose actions run it)."""
    body: dict[str, Any] = {"sort": "NAME_ASC"}
    if pool is not None:
        body["work_pools"] = {"name": {"any_": [pool]}}
    found: list[dict[str, Any]] = prefect_api("POST", f"{api_url}/deployments/filter", body)
    flows = {f["id"]: f["name"] for f in prefect_api("POST", f"{api_url}/flows/filter", {})}
    automations = prefect_api("POST", f"{api_url}/automations/filter", {})
    for d in found:
        d["flow_name"] = flows.get(d["flow_id"], "?")
        d["automations"] = [
            a for a in automations if any(act.get("deployment_id") == d["id"] for act in a.get("actions", []))
        ]
    return found
