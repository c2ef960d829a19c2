"""Impute: repair quarantined batches that failed only on missing values.

Missing values are filled with the last-good statistics (medians of numeric
features, most frequent categories) of silver, the data the champion learned
from; the repaired batch must then pass validation like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from checkpoints import Lake
from checkpoints.exceptions import ValidationFailed
from flows.config import SelfhealConfig

logger = logging.getLogger(__name__)


def imputed_key(stored_at: str) -> str:
    """The bronze idempotency key of an imputed batch (one per quarantined file)."""
    return f"imputed:{Path(stored_at).parent.name}"


def last_good_statistics(lake: Lake, schema: dict[str, str]) -> dict[str, Any]:
    """Per feature: the median (numeric) or the most frequent value (categorical) in silver."""
    silver = lake.read("silver", columns=[c for c in schema]).to_pandas()
    stats: dict[str, Any] = {}
    for column, dtype in schema.items():
        values = silver[column].dropna()
        if values.empty:
            continue
        stats[column] = float(values.median()) if dtype in ("float64", "int64") else values.mode().iloc[0]
    return stats


def impute_quarantined(cfg: SelfhealConfig, lake: Lake, stored_paths: list[str]) -> list[str]:
    """Fill, re-validate and land each quarantined batch; return the ones that landed."""
    from datetime import UTC, datetime

    from flows.pipeline import BRONZE, _next_batch_id, known_labels, locked_schema
    from flows.stages.batch_io import read_batch
    from flows.stages.validate import validate_batch

    schema = locked_schema(lake, cfg)
    if schema is None or not lake.exists("silver"):
        return []
    stats = last_good_statistics(lake, schema)
    landed = []
    for stored_at in stored_paths:
        key = imputed_key(stored_at)
        if lake.has_key(BRONZE, key):
            landed.append(stored_at)
            continue
        raw = Path(stored_at).read_bytes()
        try:
            frame = read_batch(raw, Path(stored_at).name, cfg.landing.format)
        except ValidationFailed:
            continue
        filled = frame.replace([np.inf, -np.inf], np.nan)
        present = {c: v for c, v in stats.items() if c in filled}
        filled = filled.fillna(value=present)
        outcome = validate_batch(filled, cfg, schema, known_labels=known_labels(lake, cfg))
        if not outcome.accepted or outcome.data is None:
            logger.info("imputation did not repair %s: %s", stored_at, outcome.reason)
            continue
        rows = outcome.data.copy()
        rows["_source_file"] = stored_at
        rows["_sha256"] = Path(stored_at).parent.name
        rows["_row"] = range(len(rows))
        rows["_ingested_at"] = pd.Timestamp(datetime.now(UTC))
        rows["_batch_id"] = _next_batch_id(lake)
        lake.append(BRONZE, rows, key=key)
        landed.append(stored_at)
    return landed
