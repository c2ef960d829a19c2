"""Features: deterministic, stateless transforms from bronze rows to silver rows.

Nothing here is fitted: imputation and encoding statistics are learned on the
training split only, inside the model pipeline (``flows.pipeline.stages.train``), so they
travel with the model to the server.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

#: Lineage columns carried from bronze to silver (prefixed ``_``: never features).
LINEAGE = ("_sha256", "_row", "_batch_id", "_source_file", "_ingested_at")


def feature_columns(schema: dict[str, str], target: str, id_columns: list[str] | None = None) -> list[str]:
    """Model inputs: every schema column but the target, ids and lineage, in schema order."""
    skip = {target, *(id_columns or [])}
    return [c for c in schema if c not in skip and not c.startswith("_")]


def to_silver(bronze: pd.DataFrame, schema: dict[str, str], target: str, id_columns: list[str]) -> pd.DataFrame:
    """Cast every column to its locked dtype, turn +/-inf into missing, keep lineage.

    Booleans stay booleans (nullable: a missing value stays missing), so the model's
    signature takes the user's own ``true``/``false`` (issue 16: cast to float, the
    served model refused the records it was trained on). A silver written before
    stores them as 0/1 floats; Delta casts new rows to that on append.

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
            out[column] = values.astype("boolean")
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


def model_frame(silver: pa.Table, schema: dict[str, str]) -> pd.DataFrame:
    """Silver rows as a model takes them: boolean features as pandas' nullable ``boolean``.

    A plain ``to_pandas`` turns a boolean column holding a null into Python objects,
    which the model's imputer cannot read; 0/1 floats from an older silver become
    booleans too, so every model's signature asks for ``true``/``false`` where the
    schema says ``bool``.
    """
    frame: pd.DataFrame = silver.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
    for column, dtype in schema.items():
        if dtype == "bool" and column in frame and not isinstance(frame[column].dtype, pd.BooleanDtype):
            frame[column] = frame[column].astype("boolean")
    return frame
