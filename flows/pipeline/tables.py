"""The pipeline's table names, lineage tags and locked feature schema, without the pipeline.

The pipeline flow (``flows.pipeline.flow``, which re-exports these) imports Prefect and
MLflow; a healer tick checks the stage tables every time and must not pay for either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from checkpoints import Lake
    from flows.config import SelfhealConfig

BRONZE, SILVER = "bronze", "silver"
#: Registry tags: the batch range a version trained on, and the change point it trained from.
TRAIN_BATCHES_TAG = "selfheal.train_batches"
CHANGE_TAG = "selfheal.change_point"
#: The first batch a version trained from, when it trained from a change point: later runs keep to it.
SINCE_BATCH_TAG = "selfheal.since_batch"
#: The tables a run manifest records (a run's checkpoint).
STAGE_TABLES = (BRONZE, SILVER)


def locked_schema(lake: Lake, cfg: SelfhealConfig) -> dict[str, str] | None:
    """The feature schema: from config, else from bronze's columns once a batch landed."""
    if cfg.data.schema_:
        return dict(cfg.data.schema_)
    if not lake.exists(BRONZE):
        return None
    arrow_schema = lake._open(BRONZE).schema().to_arrow()
    out: dict[str, str] = {}
    skip = {cfg.data.target, cfg.data.time_column, *cfg.data.id_columns}
    for f in pa.schema(arrow_schema):
        t = f.type
        if f.name.startswith("_") or f.name in skip or pa.types.is_timestamp(t):
            continue
        if pa.types.is_floating(t):
            out[f.name] = "float64"
        elif pa.types.is_integer(t):
            out[f.name] = "int64"
        elif pa.types.is_boolean(t):
            out[f.name] = "bool"
        else:
            out[f.name] = "string"
    return out
