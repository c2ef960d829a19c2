"""Impute: repair quarantined batches that failed only on missing values.

Each missing value is drawn at random from the same feature's values in silver,
the data the champion learned from (random hot-deck imputation); the repaired
batch must then pass validation like any other. Drawing keeps every feature's
distribution as it was: filling with a median instead would put a spike at one
value into the next model's training data and the monitor's drift reference,
which then sees live traffic as drifted (the chaos suite caught exactly that).
The draws are seeded by the quarantined file, so a repair that is retried
lands the same rows.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from checkpoints import Lake
from checkpoints.quarantine import imputed_key
from flows.config import SelfhealConfig
from flows.pipeline.exceptions import ValidationFailed
from flows.pipeline.flow import BRONZE, _next_batch_id, known_labels, locked_schema
from flows.pipeline.stages import ingest
from flows.pipeline.stages.batch_io import read_batch
from flows.pipeline.stages.train import recent
from flows.pipeline.stages.validate import validate_batch

logger = logging.getLogger(__name__)

#: At most this many last-good values are kept per feature to draw from.
DONOR_SAMPLE = 50_000


def last_good_values(
    lake: Lake, schema: dict[str, str], window_batches: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per feature: its finite, non-missing values in silver's newest ``window_batches`` batches.

    (All of silver when None; a seeded sample when there are more than ``DONOR_SAMPLE``.)
    """

    columns = [*schema, "_batch_id"] if window_batches else list(schema)
    silver = recent(lake.read("silver", columns=columns).to_pandas(), window_batches)
    rng = np.random.default_rng(seed)
    donors: dict[str, np.ndarray] = {}
    for column in schema:
        values = silver[column].dropna()
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.empty:
            continue
        array = values.to_numpy()
        donors[column] = rng.choice(array, DONOR_SAMPLE, replace=False) if len(array) > DONOR_SAMPLE else array
    return donors


def fill_missing(frame: pd.DataFrame, donors: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    """``frame`` with every missing (or infinite) value of a donor column drawn from its donors."""
    filled = frame.replace([np.inf, -np.inf], np.nan)
    rng = np.random.default_rng(seed)
    for column, values in donors.items():
        if column not in filled:
            continue
        missing = filled[column].isna().to_numpy()
        if missing.any():
            filled.loc[missing, column] = rng.choice(values, int(missing.sum()), replace=True)
    return filled


def _seed(stored_at: str) -> int:
    return int.from_bytes(hashlib.sha256(imputed_key(stored_at).encode()).digest()[:8], "big")


def impute_quarantined(cfg: SelfhealConfig, lake: Lake, stored_paths: list[str]) -> list[str]:
    """Fill, re-validate and land each quarantined batch; return the ones that landed.

    A batch imputation cannot read or check (e.g. a nested column) is left where it is,
    the others are still repaired. With ``data.id_columns``, rows whose id is already in
    bronze are not landed again (the batch counts as landed).
    """
    schema = locked_schema(lake, cfg)
    if schema is None or not lake.exists("silver"):
        return []
    donors = last_good_values(lake, schema, cfg.trainer.window_batches)
    labels = known_labels(lake, cfg)  # a batch with an unseen class is refused, so it stays as is
    ids = ingest.landed_ids(lake, cfg.data.id_columns)
    landed = []
    for stored_at in stored_paths:
        if lake.has_key(BRONZE, imputed_key(stored_at)):
            landed.append(stored_at)
            continue
        try:
            rows = _repaired(cfg, stored_at, schema, donors, labels)
        except Exception as exc:  # noqa: BLE001 - one batch imputation cannot handle must not stop the others
            logger.info("imputation cannot handle %s: %s: %s", stored_at, type(exc).__name__, exc)
            continue
        if rows is None:
            continue
        if cfg.data.id_columns:
            row_ids = ingest.row_ids(rows, cfg.data.id_columns)
            keep = [i not in ids for i in row_ids]
            ids.update(i for i, k in zip(row_ids, keep, strict=True) if k)
            rows = rows[keep]
        rows["_batch_id"] = _next_batch_id(lake)
        lake.append(BRONZE, rows, key=imputed_key(stored_at))
        landed.append(stored_at)
    return landed


def _repaired(
    cfg: SelfhealConfig,
    stored_at: str,
    schema: dict[str, str],
    donors: dict[str, np.ndarray],
    labels: list[Any] | None,
) -> pd.DataFrame | None:
    """The quarantined batch filled and validated, with lineage columns; None when it stays refused."""
    raw = Path(stored_at).read_bytes()
    try:
        frame = read_batch(raw, Path(stored_at).name, cfg.landing.format)
    except ValidationFailed:
        return None
    filled = fill_missing(frame, donors, _seed(stored_at))
    outcome = validate_batch(filled, cfg, schema, known_labels=labels)
    if not outcome.accepted or outcome.data is None:
        logger.info("imputation did not repair %s: %s", stored_at, outcome.reason)
        return None
    rows = outcome.data.copy()
    rows["_source_file"] = stored_at
    rows["_sha256"] = Path(stored_at).parent.name
    rows["_row"] = range(len(rows))
    rows["_ingested_at"] = pd.Timestamp(datetime.now(UTC))
    return rows
