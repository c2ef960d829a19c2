"""Data probes: is every landing file accounted for, i.e. were rows lost.

A file is matched with the lake by its content digest, the pipeline's idempotency
key: landed (its rows are in bronze), repaired (quarantined, then re-landed by a
repair: imputed or backfilled), escalated (quarantined and named by an escalated
incident: awaiting a person), or lost (quarantined with neither, or missing).
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from chaoslib.types import Configuration

from chaos import _landing
from chaos._polling import Check, seconds_until

__all__ = ["rows_awaiting_a_person", "rows_lost", "seconds_until_no_rows_lost"]


def rows_lost(landing_path: str, lake_root: str, bronze_table: str = "bronze") -> int:
    """Rows of landing files that are neither in bronze nor quarantined (at least 1 per unreadable file)."""
    return _landing.account(landing_path, lake_root, bronze_table).rows_lost


def rows_awaiting_a_person(landing_path: str, lake_root: str, bronze_table: str = "bronze") -> int:
    """Rows of quarantined landing files an escalated incident names: not lost, but a person must act."""
    return _landing.account(landing_path, lake_root, bronze_table).rows_escalated


def seconds_until_no_rows_lost(
    landing_path: str,
    lake_root: str,
    timeout: float = 60.0,
    bronze_table: str = "bronze",
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until no rows are lost (every landing file landed, repaired or escalated); return the seconds it took.

    Fails after the timeout naming the files still unaccounted for.
    """

    def look() -> Check:
        found = _landing.account(landing_path, lake_root, bronze_table)
        return Check(found.rows_lost == 0, found.summary())

    return seconds_until(look, f"no rows lost from {landing_path}", timeout, since, interval, configuration)
