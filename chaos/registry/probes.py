"""Registry probes: which version is champion, is it the bad one, did a foreign model's code run, does the
tracking store answer."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from pathlib import Path

import httpx
from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, seconds_until
from chaos.registry import _store
from chaos.registry.actions import BAD_MODEL, FOREIGN_MARKER
from serving.registry import CHAMPION, CHAOS_TAG

__all__ = [
    "champion_version",
    "seconds_until_champion_is_not_bad",
    "seconds_until_foreign_model_refused",
    "seconds_until_tracking_store_answers",
]


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
    tag: str = BAD_MODEL,
    configuration: Configuration | None = None,
) -> float:
    """Poll until @champion names a version that a chaos action did not make; return the seconds it took.

    ``tag``: the action's ``selfheal.chaos`` tag (``bad_model`` for promote_bad_model,
    ``foreign_model`` for promote_foreign_model).
    """
    registry = _store.registry(tracking_uri, model_name)

    def look() -> Check:
        champion = registry.by_alias(CHAMPION)
        if champion is None:
            return Check(False, f"{model_name} has no @champion")
        bad = champion.tags.get(CHAOS_TAG, "").startswith(tag)
        what = tag.replace("_", " ")
        return Check(not bad, f"@champion is v{champion.version}{f' (the {what})' if bad else ''}")

    return seconds_until(
        look, f"{model_name}@champion is not a {tag.replace('_', ' ')}", timeout, since, interval, configuration
    )


def seconds_until_foreign_model_refused(
    url: str,
    timeout: float = 60.0,
    since: str = "fault",
    interval: float = 0.5,
    asks: int = 6,
    configuration: Configuration | None = None,
) -> float:
    """Poll until every worker answering /ready serves the champion from before promote_foreign_model; seconds taken.

    Each look asks /ready ``asks`` times on new connections (so several workers answer).
    Fails at once if the foreign model's marker file exists: some process loaded it and
    ran its code. Without a foreign model promoted in this run there is nothing to refuse.
    """
    fault = ledger.last_fault(configuration, "promote_foreign_model")

    def look() -> Check:
        if fault is None:
            return Check(True, "no foreign model was promoted in this run")
        marker = Path(fault["folder"]) / FOREIGN_MARKER
        if marker.exists():
            return Check(False, f"the foreign model's code ran: {marker.read_text().strip()}", fatal=True)
        wanted = fault["champion"]
        served = {
            str(httpx.get(f"{url.rstrip('/')}/ready", timeout=5.0).json().get("model_version")) for _ in range(asks)
        }
        return Check(
            served == {wanted}, f"workers serve {sorted(served)}, want v{wanted} (foreign v{fault['foreign']})"
        )

    return seconds_until(
        look, "the foreign model refused, the old champion serving", timeout, since, interval, configuration
    )


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
