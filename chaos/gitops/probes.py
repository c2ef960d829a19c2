"""Probes: the definitions changed by hand are back as they were before (as git says)."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, seconds_until
from chaos.gitops.actions import _api
from chaos.registry._store import registry as open_registry
from serving.registry import CHAMPION

__all__ = ["seconds_until_definitions_restored"]


def seconds_until_definitions_restored(
    prefect_api_url: str,
    tracking_uri: str,
    timeout: float = 60.0,
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Seconds from the hand edit until the monitor runs unpaused, the pipeline has its parameters and
    ``@champion`` its version again (0 before the fault). Fails when the edit stays past ``timeout``."""
    detail = ledger.last_fault(configuration, "drift_definitions")
    if detail is None:
        return 0.0  # before the fault (the hypothesis' first look): nothing was changed by hand
    registry = open_registry(tracking_uri, detail["model"])

    def restored() -> Check:
        left = []
        monitor = _api("GET", f"{prefect_api_url}/deployments/{detail['monitor']['id']}")
        if monitor["paused"] != detail["monitor"]["paused"]:
            left.append(f"monitor paused={monitor['paused']}")
        pipeline = _api("GET", f"{prefect_api_url}/deployments/{detail['pipeline']['id']}")
        if pipeline["parameters"] != detail["pipeline"]["parameters"]:
            left.append(f"pipeline parameters {pipeline['parameters']}")
        champion = registry.by_alias(CHAMPION)
        if champion is None or champion.version != detail["champion"]:
            left.append(f"@champion v{champion.version if champion else None}")
        return Check(not left, "; ".join(left) or "all three back")

    return seconds_until(restored, "the definitions are back as git says", timeout, "fault", interval, configuration)
