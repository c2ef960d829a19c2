"""The inference log: every prediction (and every feedback label) appended to Delta in batches.

Requests only put rows on a bounded in-memory queue (a list append under a
lock); one background thread per worker turns them into Arrow tables and
appends them with ``Lake.append`` every ``flush_seconds`` or every
``batch_rows`` rows, whichever comes first. Each flushed batch carries its own
idempotency key, so:

- when the lake refuses a write, the batch goes to a local dead-letter file
  (``<dead_letter_dir>/<table>/<key>.parquet``) and is replayed later, by this or
  any other worker, with the same key: it can never be written twice;
- on a graceful stop (SIGTERM), ``close()`` writes (or spills) everything queued.

When the queue is full (the lake has been slow for a long time) rows are
dropped and counted (``selfheal_log_rows_dropped_total``) rather than making
requests wait.

Example:
    >>> log = InferenceLog(Lake("/data/lake"), "/var/lib/selfheal/dead-letter")
    >>> log.start()
    >>> log.submit(batch)        # from the request path: never blocks on I/O
    >>> log.close()              # on shutdown: nothing queued is lost
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from checkpoints import Lake
from checkpoints.exceptions import CheckpointError

if TYPE_CHECKING:  # types only: flows.release imports this module for its table names, not prometheus_client
    from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

INFERENCE_TABLE = "inference_log"
FEEDBACK_TABLE = "feedback"

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Columns of the inference log besides the model's features.
PREDICTION_FIELDS = [
    pa.field("_request_id", pa.string()),
    pa.field("_ts", TIMESTAMP),
    pa.field("_model_version", pa.string()),
    pa.field("_served_by", pa.string()),
    pa.field("_prediction", pa.float64()),
    pa.field("_score", pa.float64(), nullable=True),
    pa.field("_latency_ms", pa.float64()),
    pa.field("_variant", pa.string(), nullable=True),
]
FEEDBACK_SCHEMA = pa.schema(
    [pa.field("request_id", pa.string()), pa.field("label", pa.float64()), pa.field("ts", TIMESTAMP)]
)


def inference_schema(feature_fields: Sequence[pa.Field]) -> pa.Schema:
    """The inference log's schema for a model with these feature columns."""
    return pa.schema([*feature_fields, *PREDICTION_FIELDS])


@dataclass(frozen=True)
class LogBatch:
    """Rows for one table, as columns (lists or numpy arrays; None: all null).

    Attributes:
        table: the lake table the rows go to.
        schema: their Arrow schema.
        columns: column name -> values, each of length ``rows``.
        rows: the number of rows.
    """

    table: str
    schema: pa.Schema
    columns: dict[str, Any]
    rows: int


#: Rows converted to Arrow between two releases of the GIL by the writer thread.
CONVERT_ROWS = 256


def _to_arrow(schema: pa.Schema, batches: Sequence[LogBatch]) -> pa.Table:
    """The batches as one table, converted ``CONVERT_ROWS`` rows at a time with the GIL let go in between.

    Converting a flush of 5,000 rows from Python lists in one go held the GIL for ~10 ms, and
    every request of the worker waited for it: it was the p99 at 16 connections (10-12 ms
    with the log on, 4 ms with it off, ``benchmarks/serving.py``'s model). In slices, the
    event loop waits at most one slice (~0.5 ms).
    """
    tables, part, rows = [], [], 0
    for batch in batches:
        part.append(batch)
        rows += batch.rows
        if rows >= CONVERT_ROWS:
            tables.append(_slice_to_arrow(schema, part))
            part, rows = [], 0
            time.sleep(0)  # let the event loop (and the model threads) have the GIL
    if part or not tables:
        tables.append(_slice_to_arrow(schema, part))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _slice_to_arrow(schema: pa.Schema, batches: Sequence[LogBatch]) -> pa.Table:
    arrays = []
    for f in schema:
        parts: list[Any] = []
        for b in batches:
            part = b.columns.get(f.name)
            parts.append([None] * b.rows if part is None else part)
        if parts and all(isinstance(p, np.ndarray) for p in parts):
            values: Any = np.concatenate(parts) if len(parts) > 1 else parts[0]
        else:
            values = list(chain.from_iterable(p.tolist() if isinstance(p, np.ndarray) else p for p in parts))
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class InferenceLog:
    """Batched, non-blocking Delta appends with a dead-letter folder (see the module docstring)."""

    def __init__(
        self,
        lake: Lake,
        dead_letter_dir: str | os.PathLike[str],
        *,
        batch_rows: int = 5000,
        flush_seconds: float = 5.0,
        queue_rows: int = 200_000,
        replay_seconds: float = 30.0,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.lake = lake
        self.dead_letter_dir = Path(dead_letter_dir)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.queue_rows = queue_rows
        self.replay_seconds = replay_seconds
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: list[LogBatch] = []
        self._pending_rows = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._last_drop_warning = 0.0
        self._idle = threading.Event()
        self._idle.set()

    # -- the request side ------------------------------------------------------
    def submit(self, batch: LogBatch) -> bool:
        """Queue rows for writing; False (and counted) when the queue is full. Never blocks on I/O."""
        with self._cond:
            if self._closing or self._pending_rows + batch.rows > self.queue_rows:
                self._dropped(batch.rows)
                return False
            self._pending.append(batch)
            self._pending_rows += batch.rows
            self._idle.clear()
            if self._pending_rows >= self.batch_rows:
                self._cond.notify()
        if self.metrics is not None:
            self.metrics.log_queue_rows.inc(batch.rows)
        return True

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Ask the writer to write what is queued now and wait until it has (True) or ``timeout``."""
        with self._cond:
            self._cond.notify()
        return self._idle.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write (or spill to the dead-letter folder) everything queued, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error(
                    "inference log writer did not finish within %.0fs; %d rows may be lost", timeout, self._pending_rows
                )
        else:
            self._write(self._take())

    # -- the writer thread ---------------------------------------------------------
    def _take(self) -> list[LogBatch]:
        with self._cond:
            batches, self._pending, self._pending_rows = self._pending, [], 0
        if batches and self.metrics is not None:
            self.metrics.log_queue_rows.dec(sum(b.rows for b in batches))
        return batches

    def _run(self) -> None:
        next_replay = time.monotonic()
        while True:
            with self._cond:
                if not self._closing and self._pending_rows < self.batch_rows:
                    self._cond.wait(self.flush_seconds)
                closing = self._closing
            batches = self._take()
            try:
                self._write(batches)
                if not closing and time.monotonic() >= next_replay:
                    self.replay()
                    next_replay = time.monotonic() + self.replay_seconds
            except Exception:  # the writer thread must outlive any one bad batch, or every later row is lost
                logger.exception("inference log writer error; continuing")
            with self._cond:
                if not self._pending:
                    self._idle.set()
            if closing:
                leftover = self._take()
                if leftover:
                    self._write(leftover)
                self._idle.set()
                return

    def _write(self, batches: list[LogBatch]) -> None:
        groups: dict[tuple[str, pa.Schema], list[LogBatch]] = {}
        for batch in batches:
            groups.setdefault((batch.table, batch.schema), []).append(batch)
        for (table, schema), group in groups.items():
            rows = sum(b.rows for b in group)
            try:
                data = _to_arrow(schema, group)
            except Exception:  # rows passed validation, so this is a bug: drop (and count) them, keep the others
                logger.exception("cannot convert %d %s rows to Arrow; dropping them", rows, table)
                self._dropped(rows)
                continue
            key = self._key(table)
            try:
                self.lake.append(table, data, key=key, schema_mode="merge")
            except (CheckpointError, OSError) as exc:
                logger.warning("lake refused %d %s rows (%s); writing them to the dead-letter folder", rows, table, exc)
            except Exception:  # not an outage but a bug: say so loudly, and still keep the rows for the replay
                logger.exception("appending %d %s rows failed; writing them to the dead-letter folder", rows, table)
            else:
                if self.metrics is not None:
                    self.metrics.log_rows_written.labels(table).inc(rows)
                continue
            if self.metrics is not None:
                self.metrics.log_write_failures.labels(table).inc()
            self._spill(table, key, data)

    def _key(self, table: str) -> str:
        self._seq += 1
        return f"{table}-{os.getpid()}-{self._seq}-{uuid.uuid4().hex}"

    def _spill(self, table: str, key: str, data: pa.Table) -> None:
        folder = self.dead_letter_dir / table
        path = folder / f"{key}.parquet"
        tmp = folder / f".{key}.parquet.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            logger.exception(
                "cannot write %d %s rows to the dead-letter folder %s; they are lost", data.num_rows, table, folder
            )
            self._dropped(data.num_rows)
            return
        if self.metrics is not None:
            self.metrics.log_rows_dead_lettered.labels(table).inc(data.num_rows)

    def dead_letters(self) -> list[Path]:
        """Dead-letter files waiting to be replayed, oldest first."""
        if not self.dead_letter_dir.exists():
            return []
        files = [p for p in self.dead_letter_dir.glob("*/*.parquet") if not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime if p.exists() else 0.0, p.name))

    def replay(self) -> int:
        """Append dead-letter files to the lake with their original keys; returns the rows written.

        Stops at the first refusal (the lake is still down) and leaves the rest for later.
        """
        written = 0
        for path in self.dead_letters():
            table, key = path.parent.name, path.stem
            try:
                data = pq.read_table(path)
            except FileNotFoundError:
                continue  # another worker replayed it
            except (pa.ArrowException, OSError) as exc:
                logger.error("dead-letter file %s is unreadable (%s); set aside as .unreadable", path, exc)
                path.rename(path.with_suffix(".unreadable"))
                continue
            try:
                result = self.lake.append_once(table, data, key=key, schema_mode="merge")
            except (CheckpointError, OSError) as exc:
                logger.info("lake still refuses writes (%s); %s waits for the next replay", exc, path.name)
                break
            path.unlink(missing_ok=True)
            if not result.duplicate:
                written += result.rows
                if self.metrics is not None:
                    self.metrics.log_rows_replayed.labels(table).inc(result.rows)
            logger.info("replayed dead-letter batch %s (%d rows, duplicate=%s)", key, data.num_rows, result.duplicate)
        return written

    def _dropped(self, rows: int) -> None:
        if self.metrics is not None:
            self.metrics.log_rows_dropped.inc(rows)
        now = time.monotonic()
        if now - self._last_drop_warning > 10:
            self._last_drop_warning = now
            logger.warning(
                "inference log dropped %d rows (queue bound %d rows reached or writer closed)", rows, self.queue_rows
            )
