"""Release: re-check quarantined batches under the current config and land those that now pass.

The pipeline never takes a quarantined file again (it is keyed by its content digest),
so a batch refused by a config that was wrong (a ``max_duplicate_fraction`` too strict
for the data, a range too narrow) stays out until a person releases it. A release reads
the batch's kept bytes and hands them to the pipeline's own landing stage
(``flows.pipeline.flow.land_task``): the same validation, id deduplication, lineage
columns and bronze key (the file's digest) as a batch that has just arrived. A batch
that still fails stays quarantined, with the new reason recorded.

It lands directly, it does not start a pipeline run: releasing is a decision about
data, training is the pipeline's (gated, scheduled) job. The command answers per batch
at once, needs neither Prefect nor MLflow, and the next pipeline run (scheduled, or
``selfheal pipeline run``) builds silver from the released batches and trains on them.
After landing it writes a run manifest, so the released rows are part of the last
consistent checkpoint: a later run that fails and rolls bronze back to that manifest
keeps them.

Exactly once: bronze's key is the file's digest, checked against the Delta ``txn``
before every append (``checkpoints.Lake.append``), so a second release, or one re-run
after a crash between landing and recording the release, finds the batch in bronze and
only records it as released. So does a batch the healer's ``impute`` remedy already
landed (bronze key ``imputed:<digest>``).

Example:
    >>> for r in release_quarantined(cfg, ["3f2a9c01be77"]):
    ...     print(r.record.id, r.outcome, r.detail)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from checkpoints import Lake
from checkpoints.quarantine import QuarantineRecord, find, imputed_key, mark_released
from flows.config import SelfhealConfig
from flows.pipeline.flow import (
    BRONZE,
    STAGE_TABLES,
    LandingSummary,
    _next_batch_id,
    land_task,
    landing_meta,
    open_lake,
)
from flows.pipeline.stages.ingest import LandingFile

logger = logging.getLogger(__name__)

ReleaseOutcome = Literal["landed", "already landed", "still refused", "already released"]


@dataclass(frozen=True)
class Release:
    """What releasing one quarantined batch did.

    Attributes:
        record: the batch's quarantine record (as it was before the release).
        outcome: ``landed`` (in bronze now), ``already landed`` (an earlier release or the
            healer's imputation had landed it: recorded as released), ``still refused``
            (stays quarantined; ``detail`` is the current config's reason), ``already released``.
        detail: one line for a person.
        rows: rows this release put into bronze.
        notes: what validation tolerated and changed (dropped rows, columns).
    """

    record: QuarantineRecord
    outcome: ReleaseOutcome
    detail: str
    rows: int = 0
    notes: list[str] = field(default_factory=list)


def release_quarantined(cfg: SelfhealConfig, ids: list[str] | None) -> list[Release]:
    """Re-check the quarantined batches ``ids`` (digest prefixes; None: all) and land those that pass.

    Every id is resolved before anything lands, so a typo changes nothing.

    Raises:
        CheckpointNotFound: an id names no quarantined batch, or more than one.
        ConfigError: the lake has no rows yet and the batch lacks a column the config names.
    """
    lake = open_lake(cfg)
    if ids is None:
        records = lake.quarantined()
    else:
        resolved = {r.sha256: r for r in (find(lake, i) for i in ids)}
        records = sorted(resolved.values(), key=lambda r: (r.quarantined_at, r.sha256))
    landed = LandingSummary()
    results = []
    for record in records:
        result = _release_one(cfg, lake, record, landed)
        logger.debug("quarantine release %s (%s): %s: %s", record.id, record.source, result.outcome, result.detail)
        results.append(result)
    if any(r.outcome in ("landed", "already landed") for r in results):
        _checkpoint(lake, landed)
    return results


def _release_one(cfg: SelfhealConfig, lake: Lake, record: QuarantineRecord, landed: LandingSummary) -> Release:
    if record.released_at is not None:
        return Release(record, "already released", f"released at {record.released_at:%Y-%m-%d %H:%M:%S}")
    if lake.has_key(BRONZE, record.sha256) or lake.has_key(BRONZE, imputed_key(record.stored_at)):
        # Landed by an earlier release that stopped before recording it, or by imputation.
        mark_released(lake, record)
        return Release(record, "already landed", "already in bronze; recorded as released")
    file = LandingFile(record.source, record.sha256, lake.storage.read_bytes(record.stored_at))
    summary = land_task.fn(cfg, [file], _next_batch_id(lake))
    if not summary.accepted:
        reason = summary.quarantined[0][1] if summary.quarantined else "refused"
        return Release(record, "still refused", reason)
    mark_released(lake, record)
    landed.accepted += summary.accepted
    landed.rows += summary.rows
    landed.resent.update(summary.resent)
    landed.dropped.update(summary.dropped)
    detail = f"landed {summary.rows} row(s) in bronze"
    return Release(record, "landed", detail, summary.rows, list(summary.notes))


def _checkpoint(lake: Lake, landed: LandingSummary) -> None:
    """A manifest holding the released rows, so rolling back to the last manifest keeps them."""
    stages = {t: lake.version(t) for t in STAGE_TABLES if lake.exists(t)}
    run_id = datetime.now(UTC).strftime("quarantine-release-%Y%m%dT%H%M%S%f")
    lake.write_manifest(run_id, stages, meta={"outcome": "quarantine-release", "landing": landing_meta(landed)})
