"""The signal inbox: signals raised by a monitor pass the healer did not run itself.

A monitor pass consumes its window: the next pass starts where it stopped. The
healer's own passes hand their signals straight to the healer; a pass run anywhere
else (the pipeline judging the batches it just landed, before it trains on them)
posts its signals here, and the healer reads what was posted since its last tick
(``flows.healer.machine.observe``). So batch and live signals reach one incident
stream whoever ran the pass.

Table ``signal_inbox``: ``posted_at`` (timestamp us UTC), ``source``, ``signal``
(``Signal.to_dict`` as JSON).

Example:
    >>> post(lake, signals, source="pipeline")
    >>> read(lake, since=last_tick, until=now)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa

from checkpoints import Lake
from flows.monitor.signals import Signal
from serving.inference_log import TIMESTAMP

logger = logging.getLogger(__name__)

INBOX = "signal_inbox"


def post(lake: Lake, signals: Sequence[Signal], source: str, now: datetime | None = None) -> int:
    """Append ``signals`` (nothing when empty); returns how many were posted."""
    if not signals:
        return 0
    at = now or datetime.now(UTC)
    rows = pa.table(
        {
            "posted_at": pa.array([at] * len(signals), TIMESTAMP),
            "source": pa.array([source] * len(signals), pa.string()),
            "signal": pa.array([json.dumps(s.to_dict()) for s in signals], pa.string()),
        }
    )
    lake.append(INBOX, rows)
    return len(signals)


def read(lake: Lake, since: datetime, until: datetime) -> list[Signal]:
    """Signals posted in ``(since, until]``, oldest first; an unreadable row is skipped with a warning."""
    rows = lake.window(INBOX, "posted_at", since, until)
    if rows is None or rows.num_rows == 0:
        return []
    out = []
    for text in rows.sort_by("posted_at").column("signal").to_pylist():
        try:
            out.append(Signal.from_dict(json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("signal inbox: skipped a row that is not a signal: %s", exc)
    return out
