"""The breaker around the primary model: pybreaker's state machine, without its call-serializing lock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.breaker import CLOSED, HALF_OPEN, OPEN, Admission, BreakerPolicy, ModelBreaker


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fail(breaker: ModelBreaker, times: int) -> None:
    for _ in range(times):
        admission = breaker.admit()
        assert admission is not None
        breaker.record(admission, RuntimeError("model down"))


def test_opens_after_fail_max_consecutive_failures() -> None:
    states: list[str] = []
    breaker = ModelBreaker(BreakerPolicy(fail_max=3, reset_seconds=60), on_state_change=states.append)
    fail(breaker, 2)
    breaker.record(Admission.NORMAL, None)  # a success resets the count
    fail(breaker, 2)
    assert breaker.state == CLOSED
    fail(breaker, 1)
    assert breaker.state == OPEN and states == [OPEN]
    assert breaker.admit() is None  # open: the fallback answers


def test_half_open_lets_one_probe_through_then_closes_or_reopens() -> None:
    clock = FakeClock()
    states: list[str] = []
    breaker = ModelBreaker(BreakerPolicy(fail_max=1, reset_seconds=0.05), on_state_change=states.append, clock=clock)
    fail(breaker, 1)
    clock.advance(0.04)
    assert breaker.admit() is None  # not due yet
    clock.advance(0.02)
    probe = breaker.admit()
    assert probe is Admission.PROBE
    assert breaker.admit() is None  # only one probe at a time
    breaker.record(probe, RuntimeError("still down"))
    assert breaker.state == OPEN and breaker.admit() is None  # reopened, timer restarted
    clock.advance(0.06)
    probe = breaker.admit()
    assert probe is Admission.PROBE
    breaker.record(probe, None)
    assert breaker.state == CLOSED and breaker.admit() is Admission.NORMAL
    assert states == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_a_late_result_from_before_the_breaker_opened_is_not_counted() -> None:
    breaker = ModelBreaker(BreakerPolicy(fail_max=1, reset_seconds=60))
    early = breaker.admit()
    assert early is Admission.NORMAL
    fail(breaker, 1)
    breaker.record(early, None)  # must not close an open breaker
    assert breaker.state == OPEN


def test_calls_run_concurrently_not_under_pybreakers_lock() -> None:
    """Four admitted calls meet at a barrier: if the breaker serialized them, the barrier would time out."""
    breaker = ModelBreaker(BreakerPolicy(fail_max=5, reset_seconds=60))
    barrier = threading.Barrier(4, timeout=10)

    def call() -> None:
        admission = breaker.admit()
        assert admission is not None
        try:
            barrier.wait()  # a prediction that needs the other three to be running too
        except Exception as exc:
            breaker.record(admission, exc)
            raise
        breaker.record(admission, None)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(call) for _ in range(4)]:
            future.result()
    assert breaker.state == CLOSED and breaker.fail_counter == 0


def test_reset_closes_and_policy_is_checked() -> None:
    breaker = ModelBreaker(BreakerPolicy(fail_max=1, reset_seconds=60))
    fail(breaker, 1)
    breaker.reset()
    assert breaker.state == CLOSED
    with pytest.raises(ValueError):
        BreakerPolicy(fail_max=0)
    assert HALF_OPEN == "half-open"
