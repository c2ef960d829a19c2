"""The micro-batcher on the event loop: concurrent requests share a call, and a slow arm holds only its own lane.

The predictor is a stand-in whose calls the test releases by hand (an ``asyncio.Event`` per
arm), so what is asserted is the order of events, never a duration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serving.batching import BatchPolicy, MicroBatcher, PendingRequest
from serving.model import Prediction
from serving.predictor import Outcome
from serving.release import Variant

#: Guards a wait that must end on its own; reaching it is the failure, not a measurement.
STUCK_SECONDS = 10.0


class GatedPredictor:
    """Answers a batch once its arm's gate is open; records every call's arm and row count."""

    def __init__(self) -> None:
        self.gates: dict[Variant, asyncio.Event] = {"champion": asyncio.Event(), "challenger": asyncio.Event()}
        self.calls: list[tuple[Variant, int]] = []
        self.in_flight: dict[Variant, int] = {"champion": 0, "challenger": 0}

    async def predict(self, models: Any, columns: dict[str, list[Any]], variant: Variant = "champion") -> Outcome:
        rows = len(next(iter(columns.values())))
        self.calls.append((variant, rows))
        self.in_flight[variant] += 1
        try:
            await self.gates[variant].wait()
        finally:
            self.in_flight[variant] -= 1
        values = np.arange(rows, dtype=np.float64)
        return Outcome(Prediction(values, values, None), "1", "primary", variant)


MODELS = object()  # one model set for every request: batches split only by arm


def _request(i: int, variant: Variant) -> PendingRequest:
    return PendingRequest(MODELS, {"x": [float(i)]}, 1, [f"r{i}"], variant=variant, request_id=f"r{i}")  # type: ignore[arg-type]


async def _until(condition: Any) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), STUCK_SECONDS)


def test_a_stuck_challenger_holds_its_own_lane_not_the_champions() -> None:
    """Every challenger slot is taken by a batch that does not answer; champion requests are still answered."""

    async def scenario() -> None:
        predictor = GatedPredictor()
        policy = BatchPolicy(max_batch_rows=64, max_inflight=2, stall_seconds=0.01)
        batcher = MicroBatcher(predictor, policy)  # type: ignore[arg-type]
        batcher.start()
        stuck = [asyncio.ensure_future(batcher.submit(_request(i, "challenger"))) for i in range(2)]
        await _until(lambda: predictor.in_flight["challenger"] == 1)
        stuck.append(asyncio.ensure_future(batcher.submit(_request(2, "challenger"))))
        await _until(lambda: predictor.in_flight["challenger"] == policy.max_inflight)
        predictor.gates["champion"].set()
        answers = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(_request(10 + i, "champion")) for i in range(5))), STUCK_SECONDS
        )
        assert [a.outcome.variant for a in answers] == ["champion"] * 5
        assert not any(f.done() for f in stuck), "a challenger batch answered with its gate shut"
        predictor.gates["challenger"].set()
        assert {a.outcome.variant for a in await asyncio.wait_for(asyncio.gather(*stuck), STUCK_SECONDS)} == {
            "challenger"
        }
        await batcher.close()

    asyncio.run(scenario())


def test_requests_queued_behind_a_batch_form_one_batch_of_their_arm() -> None:
    """While a batch predicts, the requests that arrive wait and then share one call, one per arm."""

    async def scenario() -> None:
        predictor = GatedPredictor()
        batcher = MicroBatcher(predictor, BatchPolicy(max_batch_rows=64, max_inflight=1, stall_seconds=0.01))  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_request(0, "champion")))
        await _until(lambda: predictor.calls == [("champion", 1)])
        queued = [asyncio.ensure_future(batcher.submit(_request(1 + i, "champion"))) for i in range(6)]
        await asyncio.sleep(0)
        predictor.gates["champion"].set()
        answers = await asyncio.wait_for(asyncio.gather(first, *queued), STUCK_SECONDS)
        assert predictor.calls == [("champion", 1), ("champion", 6)]
        assert [(a.offset, a.rows) for a in answers[1:]] == [(i, 1) for i in range(6)]
        await batcher.close()

    asyncio.run(scenario())


def test_a_request_queued_behind_a_batch_goes_as_soon_as_that_batch_answers() -> None:
    """Not after the stall: the answered batch's task, still finishing, is not a batch predicting.

    The stall is longer than the test's patience, so waiting for it fails the test.
    """

    async def scenario() -> None:
        predictor = GatedPredictor()
        policy = BatchPolicy(max_batch_rows=64, max_inflight=1, stall_seconds=STUCK_SECONDS * 10)
        batcher = MicroBatcher(predictor, policy)  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_request(0, "champion")))
        await _until(lambda: predictor.in_flight["champion"] == 1)
        second = asyncio.ensure_future(batcher.submit(_request(1, "champion")))
        await asyncio.sleep(0)  # the dispatcher now waits for the one slot
        predictor.gates["champion"].set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), STUCK_SECONDS)
        assert predictor.calls == [("champion", 1), ("champion", 1)]
        assert [a.rows for a in answers] == [1, 1]
        await batcher.close()

    asyncio.run(scenario())


def test_requests_read_in_the_same_turn_as_the_first_join_its_batch() -> None:
    """A request that needs one more turn of the loop to be submitted (its body still parsing) joins the first.

    Without the dispatcher's one turn, the first request went alone and the next one made a second call.
    """

    async def scenario() -> None:
        predictor = GatedPredictor()
        predictor.gates["champion"].set()
        batcher = MicroBatcher(predictor, BatchPolicy(max_batch_rows=64, max_inflight=1, stall_seconds=0.01))  # type: ignore[arg-type]
        batcher.start()

        async def after_a_turn(request: PendingRequest) -> Any:
            await asyncio.sleep(0)  # scheduled before the first's submit: resumes before the dispatcher would
            await asyncio.sleep(0)
            return await batcher.submit(request)

        late = asyncio.ensure_future(after_a_turn(_request(1, "champion")))
        first = asyncio.ensure_future(batcher.submit(_request(0, "champion")))
        answers = await asyncio.wait_for(asyncio.gather(first, late), STUCK_SECONDS)
        assert predictor.calls == [("champion", 2)]
        assert [(a.offset, a.rows) for a in answers] == [(0, 1), (1, 1)]
        await batcher.close()

    asyncio.run(scenario())
