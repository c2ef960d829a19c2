"""Counting one scored input's rows in the predictions table and the dead-letter queue, with deltalake directly.

Not through ``flows.batch`` (the code under test) nor ``checkpoints.dlq``: the Delta tables
are read as any reader would, and a row's state in the queue is its event with the highest
``attempt``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable

#: The dead-letter kinds that are delivery failures (the row was good, the write or model call failed).
DELIVERY_KINDS = ("model", "write")
_WAITING = ("queued", "failed")


def sha256(path: Path) -> str:
    """The file's content digest: batch scoring's input version of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RowCount:
    """Where the rows of one input version are.

    Attributes:
        rows: the input's rows.
        predicted: row -> how many predictions of it the output holds.
        waiting: row -> the kind of its waiting dead letter.
    """

    rows: int
    predicted: Counter[int] = field(default_factory=Counter)
    waiting: dict[int, str] = field(default_factory=dict)

    @property
    def duplicated(self) -> int:
        return sum(1 for n in self.predicted.values() if n > 1)

    @property
    def delivery_waiting(self) -> int:
        return sum(1 for kind in self.waiting.values() if kind in DELIVERY_KINDS)

    @property
    def missing(self) -> int:
        """Rows neither predicted nor waiting in the queue (lost)."""
        return sum(1 for row in range(self.rows) if row not in self.predicted and row not in self.waiting)

    @property
    def landed_once(self) -> bool:
        """Every row predicted exactly once, or refused as bad input (``invalid``) and waiting for a person."""
        return (
            self.duplicated == 0
            and self.delivery_waiting == 0
            and all(self.predicted.get(row, 0) == 1 or self.waiting.get(row) == "invalid" for row in range(self.rows))
        )

    def summary(self) -> str:
        kinds = Counter(self.waiting.values())
        return (
            f"{sum(1 for n in self.predicted.values() if n == 1)}/{self.rows} row(s) predicted once, "
            f"{self.duplicated} more than once, {len(self.waiting)} waiting in the dead-letter queue "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) or 'none'}), {self.missing} nowhere"
        )


def count(lake_root: str, output: str, input_version: str, rows: int, dlq: str = "dlq") -> RowCount:
    """Where each of the ``rows`` rows of ``input_version`` is: ``output`` and the dead-letter table ``dlq``.

    Raises:
        whatever deltalake raises for a table that cannot be read (an outage still going).
    """
    found = RowCount(rows)
    out = Path(lake_root) / output
    if out.exists():
        table = DeltaTable(str(out)).to_pyarrow_table(columns=["_input_version", "_row"])
        mine = table.filter(pc.equal(table.column("_input_version"), input_version))
        found.predicted.update(int(r) for r in mine.column("_row").to_pylist())
    queue = Path(lake_root) / dlq
    if (queue / "_delta_log").is_dir():
        events = DeltaTable(str(queue)).to_pyarrow_table(columns=["input_version", "row", "kind", "status", "attempt"])
        newest: dict[int, tuple[int, str, str]] = {}
        for event in events.filter(pc.equal(events.column("input_version"), input_version)).to_pylist():
            seen = newest.get(event["row"])
            if seen is None or event["attempt"] > seen[0]:
                newest[event["row"]] = (event["attempt"], event["status"], event["kind"])
        found.waiting = {row: kind for row, (_, status, kind) in newest.items() if status in _WAITING}
    return found
