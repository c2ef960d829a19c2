"""Prefect settings for the flow runs selfheal starts in its own process.

The ``selfheal`` command (pipeline runs, the healer and its remedies, the demo, the
chaos suite) runs its flows in-process. For those, Prefect's flow-run heartbeats
are off unless you set them (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, the legacy
``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``, or a profile/``prefect.toml`` value):

* Prefect 3.9's heartbeat thread sleeps in one-second steps and every flow run
  waits for it to wake before returning, so each run ends up to a second late
  (an empty flow: 1.07 s with heartbeats, 0.10 s without, measured here). The
  healer's retrain remedy runs a pipeline flow inside an incident's MTTR.
* Heartbeats feed Prefect's zombie-flow detection (an automation you add on
  ``prefect.flow-run.heartbeat`` events). selfheal does not rely on it: a
  pipeline run that dies leaves the lake behind the landing zone, the monitor's
  freshness signal opens a ``stale_data`` incident, and the healer's pipeline run
  resumes from the checkpoints.

Deployment runs started by a Prefect worker (``selfheal up``) do not pass through
here and keep Prefect's own setting, so zombie detection works for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings


def heartbeats_chosen() -> bool:
    """Did the user set the flow-run heartbeat (environment, profile or prefect.toml)?"""
    return "heartbeat_frequency" in get_current_settings().flows.model_fields_set


@contextmanager
def in_process_runs() -> Iterator[None]:
    """Run the enclosed flows without flow-run heartbeats, unless the user chose a frequency."""
    if heartbeats_chosen():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
