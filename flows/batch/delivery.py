"""Delivering a batch's predictions exactly once, and every row it cannot deliver to the dead-letter queue.

An input version is scored in chunks of ``CHUNK_ROWS`` rows (one model call and one Delta
commit each; positions fixed by the constant, so a chunk is the same rows in every run).
A chunk's predictions are appended with the idempotency key
``predict:<input version>:<first row>`` (``Lake.append_once`` checks ``transaction_version``
and commits against the snapshot it checked, so a key already there writes nothing). Of a
chunk's rows, those the input contract refuses go to the dead-letter queue as one batch;
when every model of the chain fails on the chunk (``flows.batch.chain``: the champion, then
``@previous``, then the baseline, as the server answers a request), or the write of its
predictions fails, its valid rows go there as another, and that chunk counts as delivered:
its rows land only by a replay from then on, never by a second scoring. Every input row
thus ends in the output or in the queue, once; scoring an input version again lands
nothing. One bad row, or one failed chunk, never stops the others.

A replay (``replay``) re-scores a batch's waiting rows with the champion of now. Before it
scores, it looks in the output for rows of the batch that are already there (an attempt
that landed them and stopped before recording it) and records those as replayed; the rest
are appended with the key ``replay:<batch>:<attempt>``. So a replay run twice, or again
after a crash, lands nothing twice.

Example:
    >>> delivery = score_source(lake, chain, Source("table", "silver"), "predictions")
    >>> delivery.landed, delivery.dead_lettered
    >>> replay(lake, chain)          # every waiting batch
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from checkpoints import Lake
from checkpoints.dlq import DLQ, DeadLetter, DeadLetterQueue, Kind, batch_id
from checkpoints.exceptions import CheckpointError
from flows.batch.chain import ScoringChain
from flows.batch.inputs import Batch, InputUnreadable, Source, read
from flows.batch.scoring import INPUT, INPUT_VERSION, ROW, Lineage, score_rows
from serving.model import LoadedModel

logger = logging.getLogger(__name__)

#: Rows per chunk: one model call and one commit each. Part of every chunk's key (its first
#: row): changing it re-chunks the inputs scored before, so it is a constant, not a setting.
CHUNK_ROWS = 250_000
#: Replay attempts of one batch that lose a race to another replay before this one gives up.
_RACES = 5


@dataclass
class Delivery:
    """What scoring one source did.

    Attributes:
        input: the input version scored (or the source, when nothing was read).
        rows: its rows.
        landed: rows whose prediction this run appended to the output.
        dead_lettered: rows this run put in the dead-letter queue, by kind.
        done_before: rows of chunks an earlier run had delivered (nothing written again).
        skipped: why nothing was read (a file still being written, or unreadable); None: it was read.
        unreadable: ``skipped`` because it cannot be read (not merely not yet).
    """

    input: str
    rows: int = 0
    landed: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    done_before: int = 0
    skipped: str | None = None
    unreadable: bool = False

    def line(self) -> str:
        """One line for a person."""
        if self.skipped:
            return f"{self.input}: {'NOT READ' if self.unreadable else 'skipped'}: {self.skipped}"
        parts = [f"{self.rows} row(s)", f"{self.landed} landed"]
        if self.dead_lettered:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.dead_lettered.items()))
            parts.append(f"{sum(self.dead_lettered.values())} to the dead-letter queue ({kinds})")
        if self.done_before:
            parts.append(f"{self.done_before} scored by an earlier run (not again)")
        return f"{self.input}: " + ", ".join(parts)


def check_output(output: str, sources: Iterable[Source]) -> None:
    """Refuse an output table that is the dead-letter queue or one of the tables being scored.

    Raises:
        ValueError: naming the clash.
    """
    if output == DLQ:
        raise ValueError(f"--output {output!r} is the dead-letter queue's table; name another")
    for source in sources:
        if source.kind == "table" and source.name == output:
            raise ValueError(f"--output {output!r} is the table being scored; name another")


def score_source(
    lake: Lake,
    model: ScoringChain | LoadedModel,
    source: Source,
    output: str,
    *,
    id_columns: Sequence[str] = (),
    settle_seconds: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
) -> Delivery:
    """Read one source and deliver every row of it: its prediction to ``output``, or to the dead-letter queue.

    A file found in a folder that cannot be read (or is still being written) is reported in
    the result; a table or a named file that cannot be read raises. ``model``: the scoring
    chain, or one model alone (no fallback: a chunk it fails on waits in the queue).

    Raises:
        InputUnreadable: a named file or a table cannot be read.
        CheckpointError: the dead-letter queue cannot be written (the run stops: nothing is lost,
            the chunks not delivered are scored by the next run).
    """
    try:
        batch = read(lake, source, settle_seconds)
    except InputUnreadable as exc:
        if not source.settle:
            raise
        logger.warning("not scored: %s", exc)
        return Delivery(str(source), skipped=str(exc), unreadable=True)
    if batch is None:
        return Delivery(str(source), skipped="still being written; a later run scores it")
    return score_batch(lake, model, batch, output, id_columns=id_columns, chunk_rows=chunk_rows)


def score_batch(
    lake: Lake,
    model: ScoringChain | LoadedModel,
    batch: Batch,
    output: str,
    *,
    id_columns: Sequence[str] = (),
    chunk_rows: int = CHUNK_ROWS,
) -> Delivery:
    """Deliver every row of one input version, chunk by chunk, each chunk exactly once."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    queue = DeadLetterQueue(lake)
    chain = _chain(model)
    done = Delivery(str(batch), rows=batch.rows.num_rows)
    at = datetime.now(UTC)
    for start in range(0, batch.rows.num_rows, chunk_rows):
        chunk = batch.rows.slice(start, chunk_rows)
        _deliver_chunk(lake, queue, chain, batch, output, start, chunk, id_columns, at, done)
    logger.info("%s", done.line())
    return done


def _deliver_chunk(
    lake: Lake,
    queue: DeadLetterQueue,
    model: ScoringChain,
    batch: Batch,
    output: str,
    start: int,
    chunk: pa.Table,
    id_columns: Sequence[str],
    at: datetime,
    done: Delivery,
) -> None:
    key = f"predict:{batch.key}:{start}"
    whole = batch_id("chunk", output, batch.key, start)
    if lake.has_key(output, key) or queue.has_batch(whole):
        done.done_before += chunk.num_rows
        return
    letters = _Letters(queue, batch, output, start, chunk, model.version, at)
    positions = np.arange(chunk.num_rows, dtype=np.int64)
    lineage = Lineage(batch.name, batch.version, positions + start)
    try:
        scored = score_rows(model, chunk, lineage, at=at, id_columns=id_columns)
    except Exception as exc:  # noqa: BLE001 - the chain (or a lone model) failed: the chunk waits for a replay
        done.dead_lettered["model"] += letters.put(whole, "model", positions, f"the model failed: {_one_line(exc)}")
        return
    if scored.refused:
        rows = batch_id("rows", output, batch.key, start)
        done.dead_lettered["invalid"] += letters.put(rows, "invalid", list(scored.refused), scored.refused)
    if scored.predictions.num_rows == 0:
        return
    try:
        result = lake.append_once(output, scored.predictions, key=key, schema_mode="merge")
    except Exception as exc:  # noqa: BLE001 - whatever the write raised, its rows must not be lost
        if _committed(lake, output, key):
            done.landed += scored.predictions.num_rows
            return
        valid = [p for p in positions.tolist() if p not in scored.refused]
        reason = f"the write to {output} failed: {_one_line(exc)}"
        logger.warning("%s rows %d-%d: %s", batch, start, start + chunk.num_rows - 1, reason)
        done.dead_lettered["write"] += letters.put(whole, "write", valid, reason)
        return
    if result.duplicate:  # another run delivered it meanwhile
        done.done_before += chunk.num_rows
    else:
        done.landed += result.rows


@dataclass(frozen=True)
class _Letters:
    """Dead letters of one chunk: its rows' data and lineage, queued as one batch."""

    queue: DeadLetterQueue
    batch: Batch
    output: str
    start: int
    chunk: pa.Table
    model_version: str
    at: datetime

    def put(
        self, batch: str, kind: Kind, positions: Sequence[int] | np.ndarray[Any, Any], reason: str | Mapping[int, str]
    ) -> int:
        """Queue the chunk's rows at ``positions`` as batch ``batch``; the rows queued now (0: queued before)."""
        rows = self.chunk.take(pa.array(positions, pa.int64())).to_pylist()
        letters = [
            DeadLetter(
                batch,
                self.batch.name,
                self.batch.version,
                self.start + int(position),
                self.output,
                kind,
                reason if isinstance(reason, str) else reason[int(position)],
                data=data,
                model_version=self.model_version,
                at=self.at,
            )
            for position, data in zip(positions, rows, strict=True)
        ]
        return len(letters) if letters and self.queue.enqueue(letters) else 0


def _chain(model: ScoringChain | LoadedModel) -> ScoringChain:
    """One chain for a whole run (its breaker counts failures across chunks)."""
    return model if isinstance(model, ScoringChain) else ScoringChain.only(model)


def _committed(lake: Lake, output: str, key: str) -> bool:
    """Whether a write that raised committed after all (a failure after the commit); False when that cannot be told.

    A False that was wrong only queues rows that are in the output: a replay finds them there.
    """
    try:
        return lake.has_key(output, key)
    except Exception:  # noqa: BLE001 - the store that just failed may fail again; the rows are queued then
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- replay ----------------------------------------------------------------------------------
@dataclass
class Replay:
    """What replaying one dead-letter batch did.

    Attributes:
        batch: the batch id.
        output: the table its predictions belong in.
        landed: rows whose prediction this replay appended.
        found: rows found in the output already (an earlier attempt landed them and stopped
            before recording it): recorded as replayed, not written again.
        refused: rows still refused, by reason.
    """

    batch: str
    output: str = ""
    landed: int = 0
    found: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        """One line for a person."""
        parts = [f"{self.landed} landed in {self.output}"]
        if self.found:
            parts.append(f"{self.found} found there already (recorded, not written again)")
        if self.refused:
            parts.append(f"{sum(self.refused.values())} still refused")
        return f"batch {self.batch}: " + ", ".join(parts)


def replay(
    lake: Lake, model: ScoringChain | LoadedModel, batches: Sequence[str] = (), *, id_columns: Sequence[str] = ()
) -> list[Replay]:
    """Re-score the waiting rows of the dead-letter batches ``batches`` (ids or prefixes; none: every one).

    Raises:
        CheckpointNotFound: an id names no waiting batch, or several (nothing is replayed then).
        CheckpointError: other replays of a batch kept taking its attempts (run it again).
    """
    queue = DeadLetterQueue(lake)
    chain = _chain(model)
    named = queue.find(batches) if batches else None
    state = queue.rows()
    ids = named if named is not None else [batch for batch, rows in state.items() if any(r.waiting for r in rows)]
    return [_replay_batch(lake, queue, chain, batch, state.get(batch, []), id_columns) for batch in ids]


def _replay_batch(
    lake: Lake,
    queue: DeadLetterQueue,
    model: ScoringChain,
    batch: str,
    rows: list[DeadLetter],
    id_columns: Sequence[str],
) -> Replay:
    """Replay one batch's waiting ``rows`` (its rows in their newest state, as read before)."""
    outcome = Replay(batch, rows[0].output if rows else "")
    for _ in range(_RACES):
        letters = [r for r in rows if r.waiting]
        if not letters:
            return outcome
        attempt = max(r.attempt for r in rows) + 1
        first = letters[0]
        found = _landed_rows(lake, first, [r.row for r in letters])
        if found:
            reason = f"found in {first.output}: an earlier replay landed it"
            events = [r.event("replayed", attempt, reason, model.version) for r in letters if r.row in found]
            queue.record(events)
            outcome.found += len(found)
            by_row = {e.row: e for e in events}
            rows = [by_row.get(r.row, r) for r in rows]
            continue  # the others: with the next attempt
        if _score_and_land(lake, queue, model, batch, letters, attempt, id_columns, outcome):
            return outcome
        rows = queue.rows().get(batch, [])  # another replay took this attempt: look again
    raise CheckpointError(f"dead-letter batch {batch}: lost {_RACES} races to other replays; run the replay again")


def _score_and_land(
    lake: Lake,
    queue: DeadLetterQueue,
    model: ScoringChain,
    batch: str,
    letters: list[DeadLetter],
    attempt: int,
    id_columns: Sequence[str],
    outcome: Replay,
) -> bool:
    """One replay attempt of ``letters``; False: another replay took this attempt first (look again)."""
    first = letters[0]
    lineage = Lineage(first.input, first.input_version, np.array([r.row for r in letters], np.int64), batch)
    try:
        scored = score_rows(
            model, rebuild([r.data for r in letters]), lineage, at=datetime.now(UTC), id_columns=id_columns
        )
    except Exception as exc:  # noqa: BLE001 - the model's own code may raise anything: the rows keep waiting
        reason = f"the model failed: {_one_line(exc)}"
        queue.record([r.event("failed", attempt, reason, model.version) for r in letters])
        outcome.refused[reason] += len(letters)
        return True
    events = [letters[i].event("failed", attempt, reason, model.version) for i, reason in scored.refused.items()]
    outcome.refused.update(scored.refused.values())
    valid = [r for i, r in enumerate(letters) if i not in scored.refused]
    if valid:
        try:
            result = lake.append_once(
                first.output, scored.predictions, key=f"replay:{batch}:{attempt}", schema_mode="merge"
            )
        except Exception as exc:  # noqa: BLE001 - the rows keep waiting, with why
            reason = f"the write to {first.output} failed: {_one_line(exc)}"
            events += [r.event("failed", attempt, reason, model.version) for r in valid]
            outcome.refused[reason] += len(valid)
        else:
            if result.duplicate:
                return False
            landed = f"landed in {first.output}"
            events += [r.event("replayed", attempt, landed, model.version, result.version) for r in valid]
            outcome.landed += len(valid)
    queue.record(events)
    return True


def _landed_rows(lake: Lake, letter: DeadLetter, rows: list[int]) -> set[int]:
    """Which of ``rows`` of ``letter``'s input version have a prediction in its output already."""
    where = (
        (pc.field(INPUT) == letter.input) & (pc.field(INPUT_VERSION) == letter.input_version) & pc.field(ROW).isin(rows)
    )
    found = lake.scan(letter.output, where, columns=[ROW])
    return set() if found is None else {int(r) for r in found.column(ROW).to_pylist()}


def rebuild(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Queued rows' data (JSON values) as a table again; a column whose values mix types becomes text.

    Text is read back as the literal each cell spells when the rows are checked
    (``FeatureSchema.validate_table``), as a CSV's cells are.
    """
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    if not columns:  # rows without data: every field is absent
        return pa.table({"_no_data": pa.nulls(len(rows))})
    return pa.table(columns)
