"""The dead-letter queue: rows a batch scoring could not deliver, kept with why until a replay lands them.

An append-only log, like the incident log. A row enters once, ``queued``, with its data
(the input row as JSON), where it came from (input, input version, row position), the
table its prediction belongs in, and the reason. Each replay attempt then appends one
event per row it tried: ``replayed`` (its prediction landed, in the output's version
``landed_version``) or ``failed`` (still refused; the new reason). A row's newest event
(highest ``attempt``) is its state; it waits while that is ``queued`` or ``failed``.

Rows that failed together (one chunk of one input, for one kind of cause) are a
batch: what ``selfheal dlq replay --id`` names. A batch enters exactly once (key
``dlq:<batch>``) and each attempt's events are appended exactly once
(``dlq:<batch>:attempt:<n>``), so a scoring or a replay run twice records nothing twice.

Kinds: ``invalid`` (the row broke the model's input contract), ``model`` (the model
raised on the chunk), ``write`` (the prediction could not be written).

Example:
    >>> queue = DeadLetterQueue(lake)
    >>> queue.enqueue([DeadLetter("3f2a9c01be77", "silver", "12", 7, "predictions", "invalid", "amount: ...")])
    >>> queue.waiting()          # batch id -> its rows still waiting
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from checkpoints.exceptions import CheckpointNotFound
from checkpoints.rows import from_row, to_table

if TYPE_CHECKING:
    from checkpoints.lake import Lake

DLQ = "dlq"

Kind = Literal["invalid", "model", "write"]
Status = Literal["queued", "replayed", "failed"]
#: The statuses of a row still waiting for a replay.
WAITING: tuple[Status, ...] = ("queued", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeadLetter:
    """One event of one row in the queue (its first: ``queued``, with the row's data).

    Attributes:
        batch_id: the rows that failed together (``batch_id()``); what a replay names.
        input: the table name or file path the row was read from.
        input_version: the table's version, or the file's sha256.
        row: the row's position in that input version.
        output: the table its prediction belongs in.
        kind: ``invalid``, ``model`` or ``write`` (the first failure's).
        reason: one line a person can act on (this event's).
        status: ``queued``, ``replayed`` or ``failed``.
        attempt: 0 when queued, then the replay attempt that wrote this event.
        data: the input row, column -> value (``queued`` events only).
        model_version: the version that tried to score it.
        at: when this event was written.
        landed_version: ``replayed``: the output's version holding its prediction (None: it
            was found there already, landed by an attempt that stopped before recording it).
    """

    batch_id: str
    input: str
    input_version: str
    row: int
    output: str
    kind: Kind
    reason: str
    status: Status = "queued"
    attempt: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""
    at: datetime = field(default_factory=_now)
    landed_version: int | None = None

    @property
    def waiting(self) -> bool:
        """Whether the row still waits for a replay."""
        return self.status in WAITING

    def event(
        self, status: Status, attempt: int, reason: str, model_version: str, landed_version: int | None = None
    ) -> DeadLetter:
        """This row's next event (without the data, which stays on the ``queued`` one)."""
        return replace(
            self,
            status=status,
            attempt=attempt,
            reason=reason,
            data={},
            model_version=model_version,
            at=_now(),
            landed_version=landed_version,
        )


def batch_id(group: str, output: str, input_key: str, start: int) -> str:
    """The id of the rows of one chunk (``input_key`` from row ``start``) that failed as ``group``.

    ``group``: ``rows`` (rows the contract refused) or ``chunk`` (the whole chunk: the model
    or the write failed); the same chunk scored into another ``output`` is another batch.
    """
    return hashlib.sha256(f"{group}\0{output}\0{input_key}\0{start}".encode()).hexdigest()[:12]


class DeadLetterQueue:
    """The dead-letter table of a lake: enqueue failed rows, record replays, read what waits.

    Example:
        >>> queue = DeadLetterQueue(lake)
        >>> queue.enqueue(letters)                   # False: this batch was queued before
        >>> for batch, rows in queue.waiting().items(): ...
    """

    def __init__(self, lake: Lake, table: str = DLQ) -> None:
        self.lake = lake
        self.table = table

    def enqueue(self, letters: Sequence[DeadLetter]) -> bool:
        """Queue one batch's rows (all of one ``batch_id``), once; False when it was queued before.

        Raises:
            ValueError: no rows, or rows of several batches.
        """
        batch = _one_batch(letters)
        return not self.lake.append_once(
            self.table, to_table(letters), key=f"dlq:{batch}", schema_mode="merge"
        ).duplicate

    def has_batch(self, batch: str) -> bool:
        """Whether batch ``batch`` was queued (whatever became of its rows since)."""
        return self.lake.has_key(self.table, f"dlq:{batch}")

    def record(self, events: Sequence[DeadLetter]) -> bool:
        """Append one replay attempt's events of one batch (all of one ``attempt``), once; False if recorded before.

        Raises:
            ValueError: no events, events of several batches or attempts, or attempt 0 (that is ``enqueue``'s).
        """
        batch = _one_batch(events)
        attempts = {e.attempt for e in events}
        if len(attempts) != 1 or 0 in attempts:
            raise ValueError(f"events of one replay attempt (1 or more) expected, got attempts {sorted(attempts)}")
        key = f"dlq:{batch}:attempt:{attempts.pop()}"
        return not self.lake.append_once(self.table, to_table(events), key=key, schema_mode="merge").duplicate

    def rows(self) -> dict[str, list[DeadLetter]]:
        """Batch id -> each of its rows in its newest state (carrying its queued data), in row order."""
        if not self.lake.exists(self.table):
            return {}
        newest: dict[tuple[str, int], DeadLetter] = {}
        queued: dict[tuple[str, int], DeadLetter] = {}
        for raw in self.lake.read(self.table).to_pylist():
            letter = from_row(DeadLetter, raw)
            key = (letter.batch_id, letter.row)
            if letter.status == "queued":
                queued[key] = letter
            seen = newest.get(key)
            if seen is None or letter.attempt > seen.attempt:
                newest[key] = letter
        since: dict[str, datetime] = {}
        for (batch, _), letter in queued.items():
            since[batch] = min(since.get(batch, letter.at), letter.at)
        batches: dict[str, list[DeadLetter]] = {}
        # Batches in the order they were queued, each batch's rows in row order.
        for key in sorted(newest, key=lambda k: (since.get(k[0], newest[k].at), k)):
            data = queued[key].data if key in queued else {}
            batches.setdefault(key[0], []).append(replace(newest[key], data=data))
        return batches

    def waiting(self, batches: Iterable[str] | None = None) -> dict[str, list[DeadLetter]]:
        """Batch id -> its rows that still wait (batches with none left out); ``batches``: only those ids."""
        wanted = None if batches is None else set(batches)
        found = {
            batch: [r for r in rows if r.waiting]
            for batch, rows in self.rows().items()
            if wanted is None or batch in wanted
        }
        return {batch: rows for batch, rows in found.items() if rows}

    def find(self, id_prefixes: Iterable[str]) -> list[str]:
        """The ids of the waiting batches the prefixes name, each once, in the order given.

        Raises:
            CheckpointNotFound: a prefix names no waiting batch, or several (nothing is returned then).
        """
        waiting = list(self.waiting())
        found: list[str] = []
        for prefix in id_prefixes:
            wanted = prefix.strip().lower()
            matches = [batch for batch in waiting if wanted and batch.startswith(wanted)]
            if len(matches) != 1:
                what = "no waiting dead-letter batch" if not matches else f"{len(matches)} waiting batches"
                raise CheckpointNotFound(
                    f"{what} with id {prefix!r}; `selfheal dlq list` shows each batch's id"
                    + (" (give more digits)" if matches else "")
                )
            if matches[0] not in found:
                found.append(matches[0])
        return found


def _one_batch(letters: Sequence[DeadLetter]) -> str:
    batches = {letter.batch_id for letter in letters}
    if len(batches) != 1:
        raise ValueError(f"rows of exactly one batch expected, got {len(batches)} batches")
    return batches.pop()
