"""The monitor's metric rows: one measurement per row in the ``metrics`` Delta table.

Long format: ``ts, name, value, labels`` (JSON), ``window_start, window_end`` (the
data the value was measured on) and ``run`` (the monitor run that wrote it). The
monitor writes them (one keyed append per run, see ``flows.monitor.state``); the
healer reads them back to tell whether a repair held.

Example:
    >>> append_metric_rows(lake, [{"ts": now, "name": "drift.share", "value": 0.0}], key="monitor:42")
    >>> metric_values(lake, "drift.share", after=applied_at, column="window_start", inclusive=True)
    [0.0]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from checkpoints.scan import utc

if TYPE_CHECKING:
    from checkpoints.lake import AppendResult, Lake

METRICS_TABLE = "metrics"

METRICS_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("labels", pa.string()),
        pa.field("window_start", pa.timestamp("us", tz="UTC")),
        pa.field("window_end", pa.timestamp("us", tz="UTC")),
        pa.field("run", pa.int64()),
    ]
)


def metric_rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Metric rows (dicts with the ``METRICS_SCHEMA`` fields; labels as a mapping) as a table."""
    cooked = []
    for row in rows:
        labels = row.get("labels") or {}
        cooked.append(
            {
                "ts": row["ts"],
                "name": row["name"],
                "value": None if row.get("value") is None else float(row["value"]),
                "labels": json.dumps(labels, sort_keys=True, default=str) if not isinstance(labels, str) else labels,
                "window_start": row.get("window_start"),
                "window_end": row.get("window_end"),
                "run": row.get("run"),
            }
        )
    return pa.Table.from_pylist(cooked, schema=METRICS_SCHEMA)


def append_metric_rows(lake: Lake, rows: Sequence[Mapping[str, Any]], key: str) -> AppendResult:
    """Append ``rows`` to ``metrics`` exactly once per ``key``."""
    return lake.append_once(METRICS_TABLE, metric_rows_table(rows), key=key)


def metric_values(
    lake: Lake,
    name: str,
    *,
    after: datetime,
    column: Literal["ts", "window_start", "window_end"] = "ts",
    inclusive: bool = False,
) -> list[float | None]:
    """Values of metric ``name`` whose ``column`` is after ``after`` (or at it, ``inclusive``), in table order."""
    if not lake.exists(METRICS_TABLE):
        return []
    table = lake.read(METRICS_TABLE, columns=["name", "value", column])
    later = (pc.greater_equal if inclusive else pc.greater)(table.column(column), utc(after))
    rows = table.filter(pc.and_(pc.equal(table.column("name"), name), later))
    return list(rows.column("value").to_pylist())
