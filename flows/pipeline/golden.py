"""Freeze a promoted version's golden set: holdout records and what the registered artifact answers for them.

The outputs are computed here, from the artifact the registry holds at promotion,
loaded and validated exactly as the server loads it (``serving.model.LoadedModel``:
the reviewed skops types, the signature's input contract, the same label and score).
The healer later replays the records against the live server (``flows.healer.golden``):
a model swapped on disk afterwards, or computing differently, answers otherwise.

Example:
    >>> sample = stratified_sample(holdout, "is_fraud", "binary", rows=100, seed=42)
    >>> freeze(cfg, lake, registry, "7", sample, source="holdout of silver v12")
    100
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from checkpoints import Lake
from checkpoints.golden import GoldenRow, freeze_set, golden_set
from flows.config import SelfhealConfig
from flows.registry import Registry

logger = logging.getLogger(__name__)


def stratified_sample(holdout: pd.DataFrame, target: str, task: str, rows: int, seed: int) -> pd.DataFrame:
    """At most ``rows`` holdout rows; for classification, every label in proportion and at least once.

    Regression (or a holdout without the target) is sampled uniformly. Seeded: the same holdout
    gives the same sample.
    """
    if len(holdout) <= rows:
        return holdout.reset_index(drop=True)
    if task == "regression" or target not in holdout:
        return holdout.sample(n=rows, random_state=seed).reset_index(drop=True)
    groups = holdout.groupby(holdout[target], sort=True, dropna=True)
    share = rows / len(holdout)
    picked = [g.sample(n=max(1, min(len(g), round(len(g) * share))), random_state=seed) for _, g in groups]
    sample = pd.concat(picked)
    if len(sample) > rows:  # rounding up small classes: trim the largest ones back
        sample = sample.sample(n=rows, random_state=seed)
    return sample.sort_index().reset_index(drop=True)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the JSON records a client sends (missing values as null)."""
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", double_precision=15))
    return records


def freeze(cfg: SelfhealConfig, lake: Lake, registry: Registry, version: str, sample: pd.DataFrame, source: str) -> int:
    """Freeze ``version``'s golden set from ``sample`` (features at least); the rows frozen (0: it was already).

    Raises:
        ModelRefused, ModelLoadFailed: the registered artifact cannot be loaded as the server loads it.
        RequestInvalid: the sample breaks the version's own input contract.
        RegistryUnavailable: the tracking store does not answer.
    """
    from serving.model import LoadedModel, ModelThreads  # scikit-learn and skops: only when freezing

    ref = registry.version(version)
    if golden_set(lake, version, ref.run_id or ""):
        return 0
    model = LoadedModel.load(registry, ref, ModelThreads(per_call=1, pool=1), cfg.trainer.trusted_types)
    try:
        records = _records(sample[list(model.schema.names)])
        columns, _, _ = model.schema.validate(records, max_rows=len(records))
        prediction = model.predict(columns)
    finally:
        model.close()
    scores = prediction.scores.tolist() if prediction.scores is not None else [None] * len(records)
    now = datetime.now(UTC)
    rows = [
        GoldenRow(version, ref.run_id or "", i, record, {"label": label, "score": score}, now, source)
        for i, (record, label, score) in enumerate(zip(records, prediction.labels.tolist(), scores, strict=True))
    ]
    written = freeze_set(lake, rows)
    logger.info("golden set of v%s: %d records from %s", version, len(rows), source)
    return len(rows) if written else 0
