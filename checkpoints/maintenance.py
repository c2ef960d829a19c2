"""Checkpoint and vacuum that never remove a version a kept manifest still needs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from checkpoints.manifests import list_manifests

if TYPE_CHECKING:
    from checkpoints.lake import Lake

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    """What ``maintain`` did to one table."""

    table: str
    oldest_kept_version: int
    retention_hours: int
    files_removed: int


def maintain(lake: Lake, table: str, keep_manifests: int | None = None) -> MaintenanceReport:
    """Write a Delta checkpoint for ``table`` and vacuum files no kept version needs.

    Args:
        lake: the lake.
        table: the table to maintain.
        keep_manifests: how many of the newest complete manifests must stay
            restorable (None: all of them).
    """
    dt = lake._open(table)
    current = int(dt.version())
    complete = [m for m in list_manifests(lake) if m.complete]
    kept = complete if keep_manifests is None else complete[-keep_manifests:] if keep_manifests else []
    needed = [m.stages[table] for m in kept if table in m.stages]
    oldest = min(needed, default=current)
    commit_ms = {int(c["version"]): int(c["timestamp"]) for c in dt.history()}
    oldest_ms = commit_ms.get(oldest, int(time.time() * 1000))
    # Tombstones younger than the oldest needed commit are kept by this retention.
    hours = 0 if oldest == current else max(1, math.ceil((time.time() * 1000 - oldest_ms) / 3_600_000))
    dt.create_checkpoint()
    removed = dt.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False)
    logger.info("table %s: checkpoint at %d, vacuumed %d files (kept >= v%d)", table, current, len(removed), oldest)
    return MaintenanceReport(table, oldest, hours, len(removed))
