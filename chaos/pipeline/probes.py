"""Pipeline probes: did a run complete after the fault, with every landing file accounted for."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from datetime import datetime

from chaoslib.types import Configuration

from chaos import _landing, ledger
from chaos._polling import Check, seconds_until
from checkpoints import Lake

__all__ = ["seconds_until_pipeline_caught_up"]


def seconds_until_pipeline_caught_up(
    landing_path: str,
    lake_root: str,
    timeout: float = 120.0,
    bronze_table: str = "bronze",
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until a complete run manifest newer than the fault exists and no landing file is unaccounted for.

    That is: a run finished after the fault, from a consistent checkpoint, with zero
    rows lost (before any fault in this run: some complete run and zero rows lost).
    Returns the seconds it took; fails after the timeout with what is missing.
    """

    fault = ledger.since_event(configuration, since)

    def look() -> Check:
        manifest = Lake(lake_root).last_manifest()
        found = _landing.account(landing_path, lake_root, bronze_table)
        # Before any fault (the steady state) a run that finished at some point will do.
        fresh = manifest is not None and (fault is None or manifest.created_at.timestamp() >= fault)
        when = "none" if manifest is None else datetime.fromtimestamp(manifest.created_at.timestamp()).isoformat()
        return Check(fresh and found.rows_lost == 0, f"last complete manifest: {when}; {found.summary()}")

    what = "a complete pipeline run after the fault with no rows lost"
    return seconds_until(look, what, timeout, since, interval, configuration)
