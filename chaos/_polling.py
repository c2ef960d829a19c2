"""Poll until a condition holds, and say how long it took (Chaos Toolkit has no "wait until met").

Every recovery probe is the same loop: look, and either the system is back (return the
seconds since the clock started) or it is not yet (sleep, look again) until the
deadline passes, then fail loudly with the last thing seen. The clock starts at the
fault recorded in this experiment run (see ``chaos.ledger``), so the seconds returned
are the time to recover *from injection*; without a recorded fault it starts when the
probe starts.

Example:
    >>> def answers() -> Check:
    ...     return Check(http_ok(url), f"GET {url}/ready")
    >>> seconds = poll_until(answers, timeout=60, what="serving answers", started_at=time.time())
    >>> seconds = seconds_until(answers, "serving answers", 60, "fault", 0.5, configuration)  # from the fault
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chaoslib.exceptions import ActivityFailed

from chaos import ledger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One look at the system.

    Attributes:
        met: whether the condition holds now.
        detail: what was seen, for the failure message and the log.
        fatal: the condition can no longer be met (e.g. the incident escalated): stop waiting.
    """

    met: bool
    detail: str = ""
    fatal: bool = False


def poll_until(
    check: Callable[[], Check],
    *,
    timeout: float,
    what: str,
    started_at: float,
    interval: float = 0.5,
) -> float:
    """Call ``check`` until it is met; return seconds from ``started_at`` (wall clock).

    Args:
        check: one look; exceptions it raises count as "not met" with their message.
        timeout: seconds after ``started_at`` to stop waiting.
        what: the condition in words, for messages.
        started_at: ``time.time()`` when the clock started (the fault, or now).
        interval: seconds between looks.

    Raises:
        ActivityFailed: not met by ``started_at + timeout``, or a look said it never will be.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    deadline = started_at + timeout
    looks = 0
    while True:
        looks += 1
        try:
            seen = check()
        except Exception as exc:  # noqa: BLE001 - a look that errors is a look that failed
            seen = Check(False, f"{type(exc).__name__}: {exc}")
        now = time.time()
        if seen.met:
            elapsed = max(0.0, now - started_at)
            logger.info("%s after %.2fs (%d looks): %s", what, elapsed, looks, seen.detail)
            return elapsed
        if seen.fatal:
            raise ActivityFailed(f"{what}: cannot be met: {seen.detail}")
        if now >= deadline:
            raise ActivityFailed(
                f"{what}: not met within {timeout:g}s (looked {looks} times); last seen: {seen.detail or 'nothing'}"
            )
        time.sleep(min(interval, max(0.0, deadline - now)))


def seconds_until(
    check: Callable[[], Check],
    what: str,
    timeout: float,
    since: str,
    interval: float,
    configuration: Mapping[str, Any] | None,
) -> float:
    """``poll_until`` with the clock at this experiment run's newest ``since`` event (what a recovery probe returns).

    The arguments are the probe's own, in its order: ``since`` is ``fault``, ``restore`` or
    ``now`` (see ``chaos.ledger.clock_start``), ``configuration`` the one Chaos Toolkit passed.
    """
    started_at = ledger.clock_start(configuration, since)
    return poll_until(check, timeout=timeout, what=what, started_at=started_at, interval=interval)
