"""Probes of the production topology's faults (see actions.py)."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import time

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos.topology import _stack

__all__ = ["seconds_object_store_stays_down"]


def seconds_object_store_stays_down(
    stack_run: str, hold_seconds: float, interval: float = 1.0, configuration: Configuration | None = None
) -> float:
    """Watch the stopped S3 store for ``hold_seconds``: fail as soon as it answers (something brought it back early).

    The outage the experiment promises (longer than the MTTR) is then one the system under
    test lived through, not one that ended by itself. Returns the seconds watched.
    """
    endpoint = _stack.endpoint(stack_run)
    started = time.monotonic()
    while (held := time.monotonic() - started) < hold_seconds:
        if _stack.store_answers(endpoint):
            raise ActivityFailed(f"{endpoint} answered {held:.1f} s into a {hold_seconds:g} s outage")
        time.sleep(interval)
    return round(held, 2)
