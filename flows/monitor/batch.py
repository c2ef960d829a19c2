"""Batch monitoring: every landed batch is scored by the champion and logged where the monitor reads.

A user who scores in batch never sends rows through ``/predict``, so the inference
log never sees them. Instead the pipeline, right after a batch reaches silver and
before anything is trained on it, scores it with the champion of that moment and
appends the rows to the ``batch_log`` table: the model's features, the champion's
prediction and score, and the batch's own label when it has one. The monitor then
judges the logged rows at once (``flows.monitor.passes.batch_pass``) with the same
detectors as live traffic, against the reference and baseline of the champion that
scored them, and posts the signals to the inbox the healer reads
(``flows.monitor.inbox``): one incident stream for live and batch data. Serving-only
statistics (latency, fallback share, request rate) stay the inference log's.

Each batch is logged once (idempotency key ``batch-log:<sha256>``): a resumed or
repeated run never logs a batch twice. A batch that lands before any champion
exists is not logged: it is what the first champion is trained on.

Table ``batch_log``: the feature columns, then ``_request_id`` (``batch:<sha>:<row>``),
``_ts`` (when it was scored), ``_model_version``, ``_served_by`` (``batch``),
``_prediction``, ``_score`` (nullable), ``_label`` (float64, nullable), ``_batch_id``,
``_sha256``.

Example:
    >>> done, rows = log_landed_batches(lake, registry, "is_fraud", first_batch_id=7)
    >>> done.summary()
    'monitored 1 batch(es), 1000 row(s), with champion v3: no signal'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from checkpoints import Lake
from checkpoints.exceptions import RegistryUnavailable
from serving.inference_log import TIMESTAMP
from serving.registry import CHAMPION, ModelLoadFailed, ModelRegistry

if TYPE_CHECKING:
    from serving.model import LoadedModel

logger = logging.getLogger(__name__)

BATCH_LOG = "batch_log"
SERVED_BY = "batch"
SILVER = "silver"
#: How a batch row's ``_request_id`` starts (``batch:<sha>:<row>``).
REQUEST_PREFIX = "batch:"


@dataclass(frozen=True)
class BatchScoring:
    """What one ``log_landed_batches`` call did.

    Attributes:
        batches: batches scored and logged now.
        rows: their rows.
        champion: the version that scored them (None: none did).
        skipped: why nothing was scored, when nothing was.
        signals: the signals judging them raised, one line each.
    """

    batches: int = 0
    rows: int = 0
    champion: str | None = None
    skipped: str | None = None
    signals: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the run's log."""
        if self.skipped:
            return f"batch monitoring: {self.skipped}"
        judged = "; ".join(self.signals) if self.signals else "no signal"
        return f"monitored {self.batches} batch(es), {self.rows} row(s), with champion v{self.champion}: {judged}"


def log_landed_batches(
    lake: Lake,
    registry: ModelRegistry,
    target: str,
    first_batch_id: int,
    trusted_types: list[str] | None = None,
    now: datetime | None = None,
) -> tuple[BatchScoring, pa.Table | None]:
    """Score silver's batches numbered ``first_batch_id`` and up with the champion; log each once.

    Returns what was done and the rows logged now (None: none). Never raises for a
    champion that cannot be read or loaded: monitoring a batch must not stop it
    landing, so that is returned as ``skipped`` (and logged).
    """
    if not lake.exists(SILVER):
        return BatchScoring(skipped="no silver table yet"), None
    rows = lake.scan(SILVER, pc.field("_batch_id") >= first_batch_id)
    if rows is None or rows.num_rows == 0:
        return BatchScoring(skipped="no new batch reached silver"), None
    try:
        champion = registry.by_alias(CHAMPION)
    except RegistryUnavailable as exc:
        logger.warning("batch monitoring skipped: %s", exc)
        return BatchScoring(skipped=f"the registry did not answer: {exc}"), None
    if champion is None:
        return BatchScoring(skipped="no champion yet (these batches are what the first one trains on)"), None
    from serving.model import LoadedModel  # MLflow's model metadata (2 s of imports): only to score a batch

    try:
        model = LoadedModel.load(registry, champion, extra_trusted=trusted_types or ())
    except (ModelLoadFailed, RegistryUnavailable) as exc:
        logger.warning("batch monitoring skipped: champion v%s cannot score: %s", champion.version, exc)
        return BatchScoring(skipped=f"champion v{champion.version} cannot score: {exc}"), None
    at = now or datetime.now(UTC)
    logged: list[pa.Table] = []
    try:
        for sha, group in rows.to_pandas().groupby("_sha256", sort=False):
            key = f"batch-log:{sha}"
            if lake.has_key(BATCH_LOG, key):
                continue
            try:
                table = scored_rows(model, group.reset_index(drop=True), target, str(sha), at)
            except Exception as exc:  # the model's own code may raise anything; the batch still lands
                logger.warning("batch %s not monitored: %s: %s", str(sha)[:12], type(exc).__name__, exc)
                continue
            if not lake.append_once(BATCH_LOG, table, key=key, schema_mode="merge").duplicate:
                logged.append(table)
    finally:
        model.close()
    done = BatchScoring(len(logged), sum(t.num_rows for t in logged), champion.version)
    return done, pa.concat_tables(logged, promote_options="permissive") if logged else None


def scored_rows(model: LoadedModel, batch: pd.DataFrame, target: str, sha: str, at: datetime) -> pa.Table:
    """One batch's ``batch_log`` rows: its features as the model takes them, the prediction, the label."""
    names = list(model.schema.names)
    missing = [n for n in names if n not in batch.columns]
    if missing:
        raise KeyError(f"batch {sha[:12]} lacks the champion's input column(s) {missing}")
    # Missing values as None, as a JSON request brings them (pandas' NA is not a value the schema takes).
    prediction = model.predict({n: batch[n].astype(object).where(batch[n].notna(), None).tolist() for n in names})
    out = pa.Table.from_pandas(batch[names], preserve_index=False)
    rows = len(batch)
    label = pd.to_numeric(batch[target], errors="coerce") if target in batch else pd.Series(np.nan, index=batch.index)
    columns: dict[str, pa.Array] = {
        "_request_id": pa.array([f"{REQUEST_PREFIX}{sha[:16]}:{r}" for r in batch["_row"]], pa.string()),
        "_ts": pa.array([at] * rows, TIMESTAMP),
        "_model_version": pa.array([model.version] * rows, pa.string()),
        "_served_by": pa.array([SERVED_BY] * rows, pa.string()),
        "_prediction": pa.array(np.asarray(prediction.values, dtype=np.float64), pa.float64()),
        "_score": pa.nulls(rows, pa.float64())
        if prediction.scores is None
        else pa.array(np.asarray(prediction.scores, dtype=np.float64), pa.float64()),
        "_label": pa.array(label.to_numpy(dtype=np.float64), pa.float64(), mask=label.isna().to_numpy()),
        "_batch_id": pa.array(batch["_batch_id"].astype("int64"), pa.int64()),
        "_sha256": pa.array([sha] * rows, pa.string()),
    }
    for name, values in columns.items():
        out = out.append_column(name, values)
    return out


def batch_labels(rows: pa.Table | None) -> pa.Table | None:
    """The labeled ``batch_log`` rows in ``read_labeled``'s shape, as the label detectors take them.

    That is ``request_id, label, ts``, then the prediction columns and the features.
    """
    if rows is None or "_label" not in rows.column_names:
        return None
    labeled = rows.filter(pc.is_valid(rows.column("_label")))
    if labeled.num_rows == 0:
        return None
    keep = ["_prediction", "_score", "_model_version"]
    features = [c for c in labeled.column_names if not c.startswith("_")]
    out = pa.table(
        {
            "request_id": labeled.column("_request_id"),
            "label": labeled.column("_label"),
            "ts": labeled.column("_ts"),
        }
    )
    for name in [*keep, *features]:
        out = out.append_column(name, labeled.column(name))
    return out
