"""Schema evolution: map a quarantined batch's renamed column back to the known one, record it, land the batch.

Most batches refused for a missing column are an upstream renaming it. For each
quarantined batch of the incident, ``propose`` reads the kept bytes, applies the
mappings recorded so far, and pairs the batch's unknown columns with the known
feature columns it lacks (``flows.pipeline.stages.column_mapping``: name similarity,
value overlap, KS distance to the known column's last-good values in silver). A batch
is proposed only when its pairs cover what it lacks and the mapped batch then passes
validation; a column whose values do not fit is never mapped (the batch stays for
the next remedy or a person).

``apply`` records each mapping (``checkpoints.schema_mappings``) and releases the
batch through the pipeline's own landing (``flows.pipeline.quarantine``), which
applies recorded mappings before validating: the rows land under the known names,
keyed by the file's digest (exactly once), and later batches with the same rename
land without a quarantine. An added column needs nothing here (validation drops
unknown columns) and the model's feature schema never changes: it evolves only when
a retrain learns from data carrying the new column.

Heavy imports (the pipeline flow, Prefect, MLflow) happen inside the functions: a
healer tick that never needs them does not pay for them.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from checkpoints import Lake
from checkpoints.schema_mappings import SchemaMapping, record_mapping, renames
from flows.config import SelfhealConfig
from flows.pipeline.stages.column_mapping import apply_renames, match_renames
from flows.pipeline.tables import BRONZE, SILVER, locked_schema

logger = logging.getLogger(__name__)


def propose(cfg: SelfhealConfig, lake: Lake, quarantined: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan: per quarantined batch a rename can land, its renames and evidence; the others with why not.

    Args:
        quarantined: the incident's ``quarantined`` evidence (``source``, ``stored_at`` per batch).
    """
    schema = locked_schema(lake, cfg)
    if not schema or not lake.exists(SILVER):
        return {
            "batches": [],
            "skipped": [{"source": q.get("source"), "why": "no known schema yet"} for q in quarantined],
        }
    from flows.pipeline.flow import known_labels
    from flows.pipeline.imputation import last_good_values

    reference = last_good_values(lake, schema, cfg.trainer.window_batches)
    labels = known_labels(lake, cfg)
    recorded = renames(lake)
    batches, skipped = [], []
    for item in quarantined:
        stored_at = str(item.get("stored_at", ""))
        sha256 = PurePosixPath(stored_at).parent.name
        found = _propose_one(cfg, lake, stored_at, schema, reference, labels, recorded)
        if isinstance(found, str):
            skipped.append({"source": item.get("source"), "why": found})
        else:
            batches.append({"source": item.get("source"), "stored_at": stored_at, "sha256": sha256, **found})
    return {"batches": batches, "skipped": skipped}


def _propose_one(
    cfg: SelfhealConfig,
    lake: Lake,
    stored_at: str,
    schema: dict[str, str],
    reference: dict[str, Any],
    labels: list[Any] | None,
    recorded: dict[str, str],
) -> dict[str, Any] | str:
    """One batch's renames, evidence and whether they are auto; or why no mapping lands it."""
    from flows.pipeline.stages.batch_io import read_batch
    from flows.pipeline.stages.validate import validate_batch

    name = PurePosixPath(stored_at).name
    try:
        frame = read_batch(lake.storage.read_bytes(stored_at), name, cfg.landing.format)
    except Exception as exc:  # noqa: BLE001 - an unreadable batch is another remedy's case
        return f"cannot be read: {type(exc).__name__}: {exc}"
    frame, _ = apply_renames(frame, recorded)
    data = cfg.data
    match = match_renames(
        frame, schema, reference, cfg.healing.schema_match, [data.target, data.time_column or "", *data.id_columns]
    )
    evidence = [e.to_dict() for e in match.evidence]
    if not match.renames:
        missing = ", ".join(match.unmatched) or "none"
        return f"no unknown column fits a missing one (missing: {missing}); evidence: {evidence}"
    mapped, _ = apply_renames(frame, match.renames)
    outcome = validate_batch(mapped, cfg, schema, known_labels=labels)
    if not outcome.accepted:
        return f"still refused after mapping {match.renames}: {outcome.reason}"
    return {"renames": match.renames, "evidence": evidence, "auto": match.auto, "held": match.held}


def approval_needed(cfg: SelfhealConfig, plan: dict[str, Any]) -> str:
    """Why a person must approve the plan's mappings ("" when they may be applied now, or there are none)."""
    batches = plan.get("batches") or []
    if not batches:
        return ""
    proposed = "; ".join(f"{b['source']}: {b['renames']}" for b in batches)
    if cfg.healing.schema_evolution == "approve":
        return f"healing.schema_evolution is approve; proposed {proposed}"
    held = [h for b in batches for h in b.get("held", [])]
    return f"evidence below the auto thresholds: {'; '.join(held)}" if held else ""


def apply(lake: Lake, cfg: SelfhealConfig, plan: dict[str, Any], incident_id: str, approved_by: str) -> dict[str, Any]:
    """Record each batch's mappings and land it; per batch what happened (``landed``: in bronze now)."""
    from flows.pipeline.quarantine import release_quarantined

    results: dict[str, Any] = {}
    for batch in plan.get("batches") or []:
        try:
            for source, target in batch["renames"].items():
                evidence: dict[str, Any] = next((e for e in batch["evidence"] if e["source"] == source), {})
                mapping = SchemaMapping(source, target, evidence, incident_id, approved_by, batch["sha256"])
                record_mapping(lake, mapping)
        except ValueError as exc:  # a conflicting mapping recorded meanwhile: this batch is not mapped
            results[batch["source"]] = {"landed": False, "detail": str(exc)}
            continue
        (release,) = release_quarantined(cfg, [batch["sha256"]])
        landed = release.outcome in ("landed", "already landed", "already released")
        results[batch["source"]] = {"landed": landed, "detail": f"{release.outcome}: {release.detail}"}
        logger.info("schema evolution: %s %s: %s", batch["source"], batch["renames"], release.outcome)
    return results


def landed(lake: Lake, plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The plan's batches in bronze (by their digest, the pipeline's key) and those not."""
    batches = plan.get("batches") or []
    inside = [b["source"] for b in batches if lake.has_key(BRONZE, b["sha256"])]
    return inside, [b["source"] for b in batches if b["source"] not in inside]
