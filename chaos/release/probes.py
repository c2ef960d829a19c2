"""Release probes: the state of the release on the registered model, and the time until it was rolled back."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from dataclasses import asdict
from typing import Any

from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, seconds_until
from chaos.registry import _store
from serving.registry import RELEASE_TAG
from serving.release import ReleaseState

__all__ = ["release_state", "seconds_until_release_rolled_back"]


def release_state(tracking_uri: str, model_name: str) -> dict[str, Any]:
    """The release state the server routes by (the registered model's ``selfheal.release`` tag); {} when none."""

    state = ReleaseState.from_tag(_store.registry(tracking_uri, model_name).model_tag(RELEASE_TAG))
    return asdict(state) if state is not None else {}


def seconds_until_release_rolled_back(
    tracking_uri: str,
    model_name: str,
    max_share: float = 0.5,
    timeout: float = 60.0,
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the release of the worse model is rolled back (not promoted); return the seconds from the fault.

    Fails at once when the worse model was promoted, or when it was ever given more
    than ``max_share`` of the traffic.
    """
    fault = ledger.last_fault(configuration, "release_worse_model")
    worse = fault["worse"] if fault is not None else None

    def look() -> Check:
        state = release_state(tracking_uri, model_name)
        if worse is None:
            running = state.get("status") in ("running", "inconclusive")
            return Check(not running, f"release {state.get('status', 'none')}")
        if state.get("challenger") != worse:
            return Check(False, f"the release is of v{state.get('challenger')}, not the worse v{worse}")
        if state["max_share"] > max_share and state["status"] != "promoted":
            return Check(False, f"v{worse} was given {state['max_share']:.0%} > {max_share:.0%}", fatal=True)
        if state["status"] == "promoted":
            return Check(False, f"the worse v{worse} was promoted: {state['detail']}", fatal=True)
        return Check(state["status"] == "rolled_back", f"release {state['status']}: {state['detail']}")

    what = f"the canary of the worse {model_name} rolled back"
    return seconds_until(look, what, timeout, "fault", interval, configuration)
