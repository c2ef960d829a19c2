"""The dead-letter queue as a healer signal: batch predictions that could not be delivered, waiting too long.

Which rows count. A row enters the queue (``checkpoints.dlq``) for one of three kinds of
cause: ``invalid`` (the input contract refused it), ``model`` (no model of the chain
answered its chunk) or ``write`` (its prediction could not be written). Only the last two
are *delivery* failures: the row was good, the output path failed, and a replay once the
path works again lands it. An ``invalid`` row is bad input: replaying it with the same
champion refuses it again, so it is not the healer's to repair here (a person fixes the
data, or a champion that takes it is promoted: the data_quality path); it is left out of
the signal and of the remedy.

When. Delivery-failed rows raise an ``output_delivery`` signal once the oldest of them has
waited ``healing.dlq_grace_seconds`` since its newest event (queued, or a replay that
failed again). A queue that keeps growing passes the grace with its oldest row. The
grace keeps the healer from replaying into a destination still in the outage that
dead-lettered the rows (a replay that fails there only uses up the remedy's attempts)
and leaves a moment to whoever replays by hand (``selfheal dlq replay``).

The remedy (``replay_dlq``, ``flows.healer.remedies.ReplayDlq``) is ``replay``: the waiting
delivery-failed batches re-scored and landed by ``flows.batch.delivery.replay``, the code
``selfheal dlq replay`` runs, with the same chain (``load_chain``): each row lands exactly
once, also when a replay is interrupted and run again. Its verification reads the queue
again: none of those batches may still have a row waiting.

Example:
    >>> waiting = delivery_failed(lake)
    >>> waiting.rows, waiting.batches
    >>> probe_dlq(lake, now, grace_seconds=15.0)       # [Signal(OUTPUT_DELIVERY, ...)] or []
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from checkpoints import Lake
from checkpoints.dlq import DeadLetterQueue, Kind
from checkpoints.exceptions import CheckpointError
from flows.monitor.signals import Severity, Signal, SignalKind, Window

if TYPE_CHECKING:
    from flows.batch.delivery import Replay
    from flows.config import SelfhealConfig

logger = logging.getLogger(__name__)

#: The kinds of dead letter that are delivery failures (the row itself was good).
DELIVERY_KINDS: tuple[Kind, ...] = ("model", "write")


@dataclass(frozen=True)
class Waiting:
    """Delivery-failed rows still waiting in the dead-letter queue.

    Attributes:
        batches: batch id -> its waiting delivery-failed rows.
        oldest: the newest event of the row that has waited longest (None: nothing waits).
        reasons: the rows' current reasons, with their counts.
    """

    batches: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return sum(self.batches.values())

    def to_evidence(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "batches": sorted(self.batches),
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "reasons": dict(self.reasons.most_common(3)),
        }


def delivery_failed(lake: Lake) -> Waiting:
    """The rows of the lake's dead-letter queue that wait for a replay after a delivery failure (not ``invalid``)."""
    batches: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    oldest: datetime | None = None
    for batch, rows in DeadLetterQueue(lake).waiting().items():
        mine = [r for r in rows if r.kind in DELIVERY_KINDS]
        if not mine:
            continue
        batches[batch] = len(mine)
        reasons.update(r.reason for r in mine)
        first = min(r.at for r in mine)
        oldest = first if oldest is None else min(oldest, first)
    return Waiting(batches, oldest, reasons)


def probe_dlq(lake: Lake, now: datetime, grace_seconds: float) -> list[Signal]:
    """An ``output_delivery`` signal when delivery-failed rows have waited longer than ``grace_seconds``."""
    try:
        if not lake.exists(DeadLetterQueue(lake).table):
            return []
        waiting = delivery_failed(lake)
    except (CheckpointError, OSError) as exc:  # the queue unreadable this tick: the next one looks again
        logger.warning("dead-letter queue not read: %s", exc)
        return []
    if waiting.oldest is None or now - waiting.oldest < timedelta(seconds=grace_seconds):
        return []
    window = Window(waiting.oldest, now)
    return [Signal(SignalKind.OUTPUT_DELIVERY, Severity.CRITICAL, {"dlq": waiting.to_evidence()}, window, "healer")]


def replay(cfg: SelfhealConfig, lake: Lake, batches: list[str]) -> list[Replay]:
    """Replay the delivery-failed ``batches`` still waiting, as ``selfheal dlq replay --id ...`` does.

    Raises:
        NoChampion, UnhealthyChampion, ModelLoadFailed, RegistryUnavailable: no chain to score with.
        CheckpointError: the queue cannot be written, or other replays kept taking the attempts.
    """
    from flows.batch import delivery  # the model server's predictor and scikit-learn: only when replaying
    from flows.batch.champion import load_chain

    waiting = set(DeadLetterQueue(lake).waiting())
    ids = [batch for batch in batches if batch in waiting]
    if not ids:
        return []
    chain = load_chain(cfg)
    try:
        return delivery.replay(lake, chain, ids, id_columns=cfg.data.id_columns)
    finally:
        chain.close()
