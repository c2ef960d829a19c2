"""Micro-batching: concurrent requests of one worker share one model call.

There is no waiting window. A dispatcher takes every request queued so far (up
to ``max_batch_rows`` rows) as soon as the previous batch is answered, after one
turn of the event loop (requests read in the same turn as the first finish parsing
and join it); while a batch predicts, new requests queue and form the next one. Under light load each
request is its own batch (no added latency); under heavy load batches grow and
the per-call cost of pandas and scikit-learn (milliseconds, nearly independent
of the row count) is paid once per batch instead of once per request.

One batch in flight gives the biggest batches. More (up to ``max_inflight``)
are started only when the batch in flight is slow (``stall_seconds``), so a
model that hangs until its timeout does not hold every request of the worker.

Each release arm (champion, canary challenger) has a lane of its own: its queue,
its ``max_inflight`` slots and its dispatcher. With one lane, a canary whose model
slept 0.5 s per call held both slots with two of its batches, and the champion's
requests queued behind them: the champion's p99 rose with the challenger's, and the
release analysis, which compares the two, saw no latency fault (tests/serving/
test_release.py, 2 of 9 runs). A bad canary now costs only its own share. (A small batch
of a compiled model predicts on the event loop itself, ``serving.predictor``: a bounded
fraction of a millisecond that every lane waits for; a model that hangs does so in a thread.)

Example:
    >>> batcher = MicroBatcher(predictor, BatchPolicy(max_batch_rows=256, max_inflight=2), on_answered=log_rows)
    >>> batcher.start()
    >>> answer = await batcher.submit(PendingRequest(models, columns, rows=1, row_ids=["r1"]))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from serving.predictor import Outcome, Predictor
from serving.release import Variant
from serving.reload import ModelSet

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class PendingRequest:
    """One validated request waiting for its batch.

    Attributes:
        models: the model set the request was validated against (its batch uses the same).
        columns: validated feature columns.
        rows: number of rows.
        row_ids: the id of each row in the inference log.
        received_us: arrival time, microseconds since the epoch (UTC).
        started: arrival time on ``time.perf_counter``'s clock (latency).
        variant: the release arm the request is routed to (a batch holds one arm only).
        request_id: the request's id (what release routing hashes).
    """

    models: ModelSet
    columns: dict[str, list[Any]]
    rows: int
    row_ids: list[str]
    received_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    started: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[BatchAnswer] | None = None
    variant: Variant = "champion"
    request_id: str = ""


@dataclass(frozen=True)
class BatchAnswer:
    """A request's slice of its batch's outcome."""

    outcome: Outcome
    offset: int
    rows: int

    def labels(self) -> list[Any]:
        return list(self.outcome.prediction.labels[self.offset : self.offset + self.rows].tolist())

    def scores(self) -> list[float] | None:
        scores = self.outcome.prediction.scores
        return None if scores is None else list(scores[self.offset : self.offset + self.rows].tolist())


@dataclass(frozen=True)
class BatchPolicy:
    """How a worker groups its concurrent requests into model calls.

    Attributes:
        max_batch_rows: rows of concurrent requests predicted in one model call.
        max_inflight: batches predicting at once.
        stall_seconds: a batch predicting longer than this lets the next one start (up to ``max_inflight``).

    Example:
        >>> BatchPolicy(max_batch_rows=256, max_inflight=2, stall_seconds=0.05)
    """

    max_batch_rows: int = 256
    max_inflight: int = 2
    stall_seconds: float = 0.05


AnsweredHook = Callable[[list[PendingRequest], dict[str, list[Any]], Outcome], None]


class _Lane:
    """One arm's queue, slots and dispatcher."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.queue: deque[PendingRequest] = deque()
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(policy.max_inflight)
        self.answered = asyncio.Event()
        self.predicting = 0  # batches whose model call has not returned (a done task may still be in ``tasks``)
        self.tasks: set[asyncio.Task[None]] = set()
        self.dispatcher: asyncio.Task[None] | None = None


class MicroBatcher:
    """Groups concurrent requests into model calls, one lane per release arm (see the module docstring)."""

    def __init__(self, predictor: Predictor, policy: BatchPolicy, *, on_answered: AnsweredHook | None = None) -> None:
        self.predictor = predictor
        self.policy = policy
        self._on_answered = on_answered
        self._lanes: dict[Variant, _Lane] = {"champion": _Lane(policy), "challenger": _Lane(policy)}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for variant, lane in self._lanes.items():
            lane.dispatcher = loop.create_task(self._dispatch(lane), name=f"micro-batcher-{variant}")

    async def submit(self, request: PendingRequest) -> BatchAnswer:
        """Queue a request in its arm's lane and wait for its batch's answer."""
        request.future = asyncio.get_running_loop().create_future()
        lane = self._lanes[request.variant]
        lane.queue.append(request)
        lane.wake.set()
        return await request.future

    async def close(self) -> None:
        """Answer everything queued, then stop the dispatchers."""
        while any(lane.queue or lane.tasks for lane in self._lanes.values()):
            await asyncio.sleep(0.01)
        for lane in self._lanes.values():
            if lane.dispatcher is not None:
                lane.dispatcher.cancel()
                try:
                    await lane.dispatcher
                except asyncio.CancelledError:
                    pass

    async def _dispatch(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not lane.queue:
                lane.wake.clear()
                await lane.wake.wait()
            await lane.slots.acquire()
            # A batch is predicting: let more requests queue unless it is slow. Not ``lane.tasks``: a
            # batch that has answered stays there until its done-callback runs, and waiting for its
            # ``answered`` again held the next batch for the whole stall (p99 ~50 ms behind a proxy).
            if lane.predicting:
                lane.answered.clear()
                try:
                    await asyncio.wait_for(lane.answered.wait(), self.policy.stall_seconds)
                except TimeoutError:
                    pass
            else:
                # One turn of the loop: requests whose bytes came in with this one finish parsing
                # and join its batch (a model call that ran on the loop let none queue meanwhile).
                await asyncio.sleep(0)
            batch = self._take(lane.queue)
            lane.predicting += 1
            task = loop.create_task(self._run(lane, batch))
            lane.tasks.add(task)
            task.add_done_callback(lane.tasks.discard)

    def _take(self, queue: deque[PendingRequest]) -> list[PendingRequest]:
        first = queue.popleft()
        batch, rows = [first], first.rows
        while queue:
            nxt = queue[0]
            if nxt.models is not first.models or rows + nxt.rows > self.policy.max_batch_rows:
                break
            batch.append(queue.popleft())
            rows += nxt.rows
        return batch

    async def _run(self, lane: _Lane, batch: list[PendingRequest]) -> None:
        try:
            if len(batch) == 1:
                columns = batch[0].columns
            else:
                names = batch[0].columns.keys()
                columns = {name: list(chain.from_iterable(p.columns[name] for p in batch)) for name in names}
            outcome = await self.predictor.predict(batch[0].models, columns, batch[0].variant)
        except Exception as exc:  # each request re-raises it (503 or a bug's 500); the dispatcher goes on
            for request in batch:
                if request.future is not None and not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            lane.predicting -= 1
            lane.slots.release()
            lane.answered.set()
        offset = 0
        for request in batch:
            if request.future is not None and not request.future.done():
                request.future.set_result(BatchAnswer(outcome, offset, request.rows))
            offset += request.rows
        if self._on_answered is not None:
            try:
                self._on_answered(batch, columns, outcome)
            except Exception:  # the requests are answered already: a bug in recording them must not fail them
                logger.exception("recording a batch's predictions failed")
