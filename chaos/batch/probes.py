"""Batch scoring probes: the rows of the batch scored during the outage, each in the predictions table once.

Counted with deltalake directly (``chaos.batch._rows``): the predictions table's rows of
the file's input version by ``_row``, and the dead-letter table's newest event per row.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, seconds_until
from chaos.batch import _rows
from chaos.batch.actions import FAULT

__all__ = ["seconds_until_batch_rows_landed_once"]


def seconds_until_batch_rows_landed_once(
    lake_root: str,
    timeout: float = 60.0,
    since: str = "fault",
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until every row of the batch scored under the outage has exactly one prediction in its table.

    A row refused by the input contract (bad input, ``invalid``) may wait in the queue
    instead; a row whose delivery failed may not. A row predicted twice can never be
    undone: the probe fails at once. Before any outage in this run there is nothing to
    count (met). Returns the seconds from the injection; fails after the timeout with
    where the rows are.
    """

    def look() -> Check:
        faults = [e.detail for e in ledger.current_run(configuration) if e.event == "fault" and e.fault == FAULT]
        if not faults:
            return Check(True, "no batch was scored under an outage in this run")
        fault = faults[-1]
        found = _rows.count(lake_root, str(fault["table"]), str(fault["input_version"]), int(fault["rows"]))
        return Check(found.landed_once, found.summary(), fatal=found.duplicated > 0)

    what = "every row of the batch scored during the outage in the predictions table exactly once"
    return seconds_until(look, what, timeout, since, interval, configuration)
