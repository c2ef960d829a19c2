"""The inference log: every prediction (and every feedback label) appended to Delta in batches.

Requests only put rows on a bounded in-memory queue (one Python list per
column, extended under a lock); one background thread per worker turns the
lists into Arrow and appends them with ``Lake.append`` every ``flush_seconds``
or every ``batch_rows`` rows, whichever comes first. Each flushed batch
carries its own idempotency key, so:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from checkpoints import Lake
from checkpoints.exceptions import CheckpointError

if TYPE_CHECKING:  # types only: flows.release imports this module for its table names, not prometheus_client
    from serving.metrics import LogMetrics
    from serving.settings import ServerSettings

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


#: Values of one column converted to Arrow in one call (one call holds the GIL ~1 ms).
CONVERT_ROWS = 5000


class _Queued:
    """The rows queued for one table and schema: one Python list per column.

    A submit extends the lists (a few microseconds, on the request path); the writer turns
    each list into Arrow in C calls of ``CONVERT_ROWS`` values. Converting the requests' own
    small batches at flush time instead (5,000 one-row batches x 21 columns, in Python)
    held the GIL for 40-75 ms a flush, and the worker's event loop waited up to a switch
    interval (5 ms) at a time for it: it was the p99 at 16 connections
    (``benchmarks/serving.py``'s model: 15-20 ms with the log on, 5-9 ms with it off).
    """

    def __init__(self, table: str, schema: pa.Schema) -> None:
        self.table = table
        self.schema = schema
        self.values: dict[str, list[Any]] = {f.name: [] for f in schema}
        self.rows = 0

    def add(self, batch: LogBatch) -> None:
        """Append ``batch``'s rows (all or nothing).

        Raises:
            ValueError: a column does not hold ``batch.rows`` values.
        """
        parts = []
        for name, values in self.values.items():
            part = batch.columns.get(name)
            if part is None:
                part = [None] * batch.rows
            elif isinstance(part, np.ndarray):
                part = part.tolist()
            if len(part) != batch.rows:
                raise ValueError(f"{self.table}: column {name} holds {len(part)} values for {batch.rows} rows")
            parts.append((values, part))
        for values, part in parts:
            values.extend(part)
        self.rows += batch.rows

    def to_arrow(self) -> pa.Table:
        """The rows as one table, each column converted ``CONVERT_ROWS`` values per call.

        A backlog (the queue holds up to ``queue_rows`` while the lake is slow) is then still
        converted in calls of a millisecond or two, between which the event loop can take the GIL.
        """
        columns = []
        for f in self.schema:
            values = self.values[f.name]
            chunks = [pa.array(values[i : i + CONVERT_ROWS], type=f.type) for i in range(0, len(values), CONVERT_ROWS)]
            columns.append(pa.chunked_array(chunks, type=f.type))
        return pa.Table.from_arrays(columns, schema=self.schema)


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
        metrics: LogMetrics | None = None,
    ) -> None:
        self.lake = lake
        self.dead_letter_dir = Path(dead_letter_dir)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.queue_rows = queue_rows
        self.replay_seconds = replay_seconds
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, int], _Queued] = {}  # by table and the schema object's id
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
            key = (batch.table, id(batch.schema))  # the server's schemas are cached: the same object each time
            queued = self._pending.get(key) or _Queued(batch.table, batch.schema)
            try:
                queued.add(batch)
            except (TypeError, ValueError):  # passed validation, so a bug: drop (and count) it, keep the others
                logger.exception("cannot queue %d %s rows; dropping them", batch.rows, batch.table)
                self._dropped(batch.rows)
                return False
            self._pending[key] = queued
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
    def _take(self) -> list[_Queued]:
        with self._cond:
            queued, self._pending, self._pending_rows = list(self._pending.values()), {}, 0
        if queued and self.metrics is not None:
            self.metrics.log_queue_rows.dec(sum(q.rows for q in queued))
        return queued

    def _run(self) -> None:
        next_replay = time.monotonic()
        while True:
            with self._cond:
                if not self._closing and self._pending_rows < self.batch_rows:
                    self._cond.wait(self.flush_seconds)
                closing = self._closing
            queued = self._take()
            try:
                self._write(queued)
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

    def _write(self, queued: list[_Queued]) -> None:
        for group in queued:
            table, rows = group.table, group.rows
            try:
                data = group.to_arrow()
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


@dataclass(frozen=True)
class LogTarget:
    """Where and how an inference log writes: the server's settings, also sent to a shadow process."""

    lake_root: str
    dead_letter_dir: str
    storage_options: dict[str, str] = field(default_factory=dict)
    batch_rows: int = 5000
    flush_seconds: float = 5.0
    queue_rows: int = 200_000
    replay_seconds: float = 30.0

    @classmethod
    def of(cls, settings: ServerSettings) -> LogTarget | None:
        """The settings' log target; None when the server keeps no inference log."""
        if not settings.inference_log:
            return None
        return cls(
            settings.lake_root,
            settings.dead_letter_dir,
            dict(settings.lake_storage_options),
            settings.log_batch_rows,
            settings.log_flush_seconds,
            settings.log_queue_rows,
            settings.log_replay_seconds,
        )

    def build(self, metrics: LogMetrics | None = None) -> InferenceLog:
        """An inference log writing here (not started)."""
        return InferenceLog(
            Lake(self.lake_root, self.storage_options or None),
            self.dead_letter_dir,
            batch_rows=self.batch_rows,
            flush_seconds=self.flush_seconds,
            queue_rows=self.queue_rows,
            replay_seconds=self.replay_seconds,
            metrics=metrics,
        )
