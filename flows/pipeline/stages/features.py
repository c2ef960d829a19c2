"""Features: deterministic, stateless transforms from bronze rows to silver rows.

Nothing here is fitted: imputation and encoding statistics are learned on the
training split only, inside the model pipeline (``flows.pipeline.stages.train``), so they
travel with the model to the server.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Lineage columns carried from bronze to silver (prefixed ``_``: never features).
LINEAGE = ("_sha256", "_row", "_batch_id", "_source_file", "_ingested_at")


def feature_columns(schema: dict[str, str], target: str, id_columns: list[str] | None = None) -> list[str]:
    """Model inputs: every schema column but the target, ids and lineage, in schema order."""
    skip = {target, *(id_columns or [])}
    return [c for c in schema if c not in skip and not c.startswith("_")]


def to_silver(bronze: pd.DataFrame, schema: dict[str, str], target: str, id_columns: list[str]) -> pd.DataFrame:
    """Cast every column to its locked dtype, turn +/-inf into missing, keep lineage.

    Args:
        bronze: validated rows with lineage columns.
        schema: the locked feature schema (column -> "float64" | "int64" | "string" | "bool").
        target: the label column (kept as float64 for regression and int-like classes alike).
        id_columns: columns kept for joins but never used as features.
    """
    out = pd.DataFrame(index=bronze.index)
    for column in feature_columns(schema, target, id_columns):
        dtype = schema[column]
        values = bronze[column] if column in bronze else pd.Series(np.nan, index=bronze.index)
        if dtype in ("float64", "int64"):
            numeric = pd.to_numeric(values, errors="coerce").astype("float64")
            out[column] = numeric.replace([np.inf, -np.inf], np.nan)
        elif dtype == "bool":
            out[column] = values.astype("float64")
        else:
            out[column] = values.astype("string").astype(object).where(values.notna(), None)
    for column in id_columns:
        if column in bronze:
            out[column] = bronze[column]
    out[target] = pd.to_numeric(bronze[target], errors="coerce").astype("float64")
    for column in LINEAGE:
        if column in bronze:
            out[column] = bronze[column]
    return out.reset_index(drop=True)
