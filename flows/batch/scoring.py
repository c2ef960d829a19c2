"""Scoring one chunk of rows: the server's input contract, one model call, the prediction rows with lineage.

Pure: rows in, prediction rows and refusals out; writing them is ``flows.batch.delivery``'s.
The rows are checked column by column with the rules the server applies to a request
(``FeatureSchema.validate_table``); the valid ones go to the server's fallback chain in one
call (``flows.batch.chain``: the champion, else ``@previous``, else the baseline, as a
server micro-batch is answered); each refused row gets the server's words for why, naming
its fields.

Table ``predictions`` (or ``--output``): the configured id columns when the input has
them (as text), then ``_input`` (table name or file path), ``_input_version`` (table version or the
file's sha256), ``_row`` (position in that input version), ``_model_version`` (the
version that answered: the champion's, or the fallback's), ``_served_by`` (``primary``,
``fallback`` or ``baseline``: the link of the chain that answered), ``_scored_at``,
``_prediction`` (float64: the value, or a class's index when labels are not numbers, as
the inference log), ``_score`` (the positive class's probability for a
binary model, the top class's for multiclass, null for regression), ``_dlq_batch`` (the
dead-letter batch a replay landed it from; null when it landed first time).

Example:
    >>> scored = score_rows(chain, rows, Lineage("silver", "12", np.arange(1000)), at=now)
    >>> scored.predictions.num_rows, scored.refused    # {position in rows: reason}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.batch.chain import ScoringChain
from serving.inference_log import TIMESTAMP
from serving.model import LoadedModel

PREDICTIONS = "predictions"
INPUT, INPUT_VERSION, ROW = "_input", "_input_version", "_row"
MODEL_VERSION, SCORED_AT, PREDICTION, SCORE, DLQ_BATCH = (
    "_model_version",
    "_scored_at",
    "_prediction",
    "_score",
    "_dlq_batch",
)
SERVED_BY = "_served_by"


@dataclass(frozen=True)
class Lineage:
    """Where a chunk's rows come from.

    Attributes:
        input: the table name or file path.
        input_version: the table's version, or the file's sha256.
        rows: each row's position in that input version.
        dlq_batch: the dead-letter batch they are replayed from (None: scored first time).
    """

    input: str
    input_version: str
    rows: np.ndarray[Any, np.dtype[np.int64]]
    dlq_batch: str | None = None


@dataclass(frozen=True)
class Scored:
    """One chunk scored.

    Attributes:
        predictions: the valid rows' prediction rows (maybe none).
        refused: position in the chunk -> why the row was refused (its fields named).
    """

    predictions: pa.Table
    refused: dict[int, str]


def score_rows(
    model: ScoringChain | LoadedModel,
    rows: pa.Table,
    lineage: Lineage,
    *,
    at: datetime,
    id_columns: Sequence[str] = (),
) -> Scored:
    """Check ``rows`` against the champion's input contract and answer the valid ones in one call of the chain.

    ``model``: the chain, or one model (a chain of it alone: no fallback).

    Raises:
        Exception: every link of the chain failed (``ServingUnavailable``), or a lone model's own
            error (the caller keeps the chunk for a replay).
    """
    chain = model if isinstance(model, ScoringChain) else ScoringChain.only(model)
    check = chain.schema.validate_table(rows)
    refused = {row: check.reason(row) for row in sorted(check.errors)}
    valid = check.valid
    kept = rows if not refused else rows.filter(pa.array(valid))
    if kept.num_rows == 0:
        return Scored(_empty(kept, id_columns), refused)
    outcome = chain.predict_frame(check.frame)
    prediction = outcome.prediction
    count = kept.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: pc.cast(kept.column(name), pa.string()) for name in _ids(kept, id_columns)
    }
    columns.update(
        {
            INPUT: pa.repeat(pa.scalar(lineage.input, pa.string()), count),
            INPUT_VERSION: pa.repeat(pa.scalar(lineage.input_version, pa.string()), count),
            ROW: pa.array(lineage.rows if not refused else lineage.rows[valid], pa.int64()),
            MODEL_VERSION: pa.repeat(pa.scalar(outcome.model_version, pa.string()), count),
            SERVED_BY: pa.repeat(pa.scalar(outcome.served_by, pa.string()), count),
            SCORED_AT: pa.repeat(pa.scalar(at, TIMESTAMP), count),
            PREDICTION: pa.array(prediction.values, pa.float64()),
            SCORE: pa.nulls(count, pa.float64()) if prediction.scores is None else pa.array(prediction.scores),
            DLQ_BATCH: pa.repeat(pa.scalar(lineage.dlq_batch, pa.string()), count),
        }
    )
    return Scored(pa.table(columns), refused)


def _ids(rows: pa.Table, id_columns: Sequence[str]) -> list[str]:
    """The configured id columns the rows have: they come along (as text, whatever the input's type, so one
    output table takes them from parquet and CSV alike), and a prediction joins back to its record."""
    return [name for name in id_columns if name in rows.column_names]


def _empty(rows: pa.Table, id_columns: Sequence[str]) -> pa.Table:
    fields = [pa.field(name, pa.string()) for name in _ids(rows, id_columns)]
    fields += [
        pa.field(INPUT, pa.string()),
        pa.field(INPUT_VERSION, pa.string()),
        pa.field(ROW, pa.int64()),
        pa.field(MODEL_VERSION, pa.string()),
        pa.field(SERVED_BY, pa.string()),
        pa.field(SCORED_AT, TIMESTAMP),
        pa.field(PREDICTION, pa.float64()),
        pa.field(SCORE, pa.float64()),
        pa.field(DLQ_BATCH, pa.string()),
    ]
    return pa.schema(fields).empty_table()
