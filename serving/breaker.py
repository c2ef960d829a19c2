"""A circuit breaker around the primary model that never serializes predictions.

``pybreaker.CircuitBreaker.call`` holds one lock for the whole guarded call, so
wrapping a prediction with it would let one request predict at a time. Here the
prediction runs outside the breaker: ``admit()`` asks whether the primary may be
called (closed: yes; open: no until the reset time is up, then one probe;
half-open: only the probe), and ``record()`` then replays the call's outcome
through ``pybreaker`` (a no-op function that returns or raises), so pybreaker
still owns the counting and the state machine and its lock is held for
microseconds only.

Time is the breaker's own ``clock`` (a constructor argument, ``time.monotonic``
by default; tests pass a fake one): when the open breaker is due, ``admit()``
moves pybreaker to half-open itself (``CircuitBreaker.half_open()``), so
pybreaker's wall-clock reset timer is never what decides.

Example:
    >>> breaker = ModelBreaker(BreakerPolicy(fail_max=5, reset_seconds=10, timeout_seconds=1))
    >>> admission = breaker.admit()
    >>> if admission is not None:
    ...     try:
    ...         result = predict()
    ...     except Exception as exc:
    ...         breaker.record(admission, exc)
    ...     else:
    ...         breaker.record(admission, None)
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


def _import_pybreaker() -> Any:
    """pybreaker, without the redis client it imports for a storage selfheal never uses (~0.2 s of a cold start)."""
    if "redis" in sys.modules or "pybreaker" in sys.modules:
        import pybreaker
    else:
        sys.modules["redis"] = None  # type: ignore[assignment]  # "import redis" raises ImportError: pybreaker skips it
        try:
            import pybreaker
        finally:
            del sys.modules["redis"]  # anyone else importing redis later gets the real one
    return pybreaker


if TYPE_CHECKING:
    import pybreaker
else:
    pybreaker = _import_pybreaker()

logger = logging.getLogger(__name__)

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN

#: Numeric codes for the Prometheus gauge.
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens and how long it stays open.

    Attributes:
        fail_max: consecutive failed (or timed-out) primary calls that open the breaker.
        reset_seconds: how long it stays open before one probe call may try the primary.
        timeout_seconds: a primary call slower than this counts as failed (and is answered by the fallback).

    Example:
        >>> BreakerPolicy(fail_max=3, reset_seconds=5.0, timeout_seconds=0.5)
    """

    fail_max: int = 5
    reset_seconds: float = 10.0
    timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {self.fail_max}")
        if self.reset_seconds <= 0 or self.timeout_seconds <= 0:
            raise ValueError("reset_seconds and timeout_seconds must be > 0")


class Admission(enum.Enum):
    """Why a call to the primary was allowed."""

    NORMAL = "normal"
    """The breaker is closed."""
    PROBE = "probe"
    """The breaker was open long enough: this call decides whether it closes."""


def _replay(error: BaseException | None) -> None:
    if error is not None:
        raise error


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: ModelBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._owner._on_state_change(old_state.name if old_state else None, new_state.name)


class ModelBreaker:
    """Admission control and failure counting for the primary model (see the module docstring)."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        name: str = "primary-model",
        on_state_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_change = on_state_change
        self._lock = threading.Lock()
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=policy.reset_seconds,
            name=name,
            listeners=[_StateListener(self)],
            throw_new_error_on_trip=False,
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._breaker.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self._breaker.fail_counter)

    def admit(self) -> Admission | None:
        """Whether the primary may be called now; None means answer from the fallback."""
        state = self._breaker.current_state
        if state == CLOSED:
            return Admission.NORMAL
        with self._lock:
            if self._probe_in_flight:
                return None
            if state == OPEN:
                if self._opened_at is not None and self._clock() - self._opened_at < self.policy.reset_seconds:
                    return None
                self._breaker.half_open()  # our clock, not pybreaker's, decides that the probe is due
            self._probe_in_flight = True
            return Admission.PROBE

    def record(self, admission: Admission, error: BaseException | None) -> None:
        """Count the outcome of a call that ``admit()`` allowed (``error`` None: it succeeded)."""
        try:
            if admission is Admission.NORMAL and self._breaker.current_state != CLOSED:
                return  # admitted before the breaker opened: the probe decides now, not this call
            try:
                # Only this replay runs under pybreaker's lock: microseconds, not a prediction.
                self._breaker.call(_replay, error)
            except pybreaker.CircuitBreakerError:
                pass  # open and not yet due: the outcome of a late call is not counted
            except Exception as exc:  # the replayed failure itself
                if exc is not error:
                    raise
        finally:
            if admission is Admission.PROBE:
                with self._lock:
                    self._probe_in_flight = False

    def reset(self) -> None:
        """Close the breaker (a new primary model was loaded: its predecessor's failures do not count)."""
        self._breaker.close()
        with self._lock:
            self._opened_at = None

    def _on_state_change(self, old: str | None, new: str) -> None:
        if new == OPEN:
            self._opened_at = self._clock()
            logger.warning(
                "primary model breaker opened after %d failures; answering from the fallback for %.1fs",
                self.policy.fail_max,
                self.policy.reset_seconds,
            )
        elif new == CLOSED and old is not None and old != CLOSED:
            logger.info("primary model breaker closed: the primary answers again")
        if self._on_change is not None:
            self._on_change(new)
