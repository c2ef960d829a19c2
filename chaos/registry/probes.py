"""Registry probes: which version is champion, is it the bad one, does the tracking store answer."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from chaoslib.types import Configuration

from chaos._polling import Check, seconds_until
from chaos.registry import _store
from chaos.registry.actions import BAD_MODEL
from serving.registry import CHAMPION, CHAOS_TAG

__all__ = ["champion_version", "seconds_until_champion_is_not_bad", "seconds_until_tracking_store_answers"]


def champion_version(tracking_uri: str, model_name: str, alias: str = "champion") -> str:
    """The version the alias names ("" when the model has no such alias; an outage raises RegistryUnavailable)."""
    found = _store.registry(tracking_uri, model_name).by_alias(alias)
    return found.version if found is not None else ""


def seconds_until_champion_is_not_bad(
    tracking_uri: str,
    model_name: str,
    timeout: float = 60.0,
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until @champion names a version that promote_bad_model did not make; return the seconds it took."""
    registry = _store.registry(tracking_uri, model_name)

    def look() -> Check:
        champion = registry.by_alias(CHAMPION)
        if champion is None:
            return Check(False, f"{model_name} has no @champion")
        bad = champion.tags.get(CHAOS_TAG, "").startswith(BAD_MODEL)
        return Check(not bad, f"@champion is v{champion.version}{' (the bad model)' if bad else ''}")

    return seconds_until(look, f"{model_name}@champion is not a bad model", timeout, since, interval, configuration)


def seconds_until_tracking_store_answers(
    tracking_uri: str,
    timeout: float = 60.0,
    since: str = "fault",
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the tracking store answers a read within a second (sqlite:/// or an http(s) tracking server)."""

    def look() -> Check:
        ok, seen = _store.answers(tracking_uri, timeout=1.0)
        return Check(ok, seen)

    return seconds_until(look, f"tracking store {tracking_uri} answers", timeout, since, interval, configuration)
