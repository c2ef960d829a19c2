"""Window rules: N windows in a row, data freshness, and missing rows.

Example:
    >>> rule = ConsecutiveWindows({"latency": 3})
    >>> [rule.observe("latency", True) for _ in range(3)]
    [False, False, True]
    >>> check_missing_rows(observed=900, expected=1000, tolerance=0.05).missing
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class ConsecutiveWindows:
    """Raise a condition only after it held in ``required[key]`` windows in a row.

    Keys may be qualified (``missing_rows:inference_log``): the full key is looked
    up first, then the part before the colon.

    Attributes:
        required: key -> windows needed (keys not listed need ``default``).
        default: windows needed for unlisted keys.
        streaks: key -> windows in a row the condition has held so far.
    """

    required: Mapping[str, int] = field(default_factory=dict)
    default: int = 1
    streaks: dict[str, int] = field(default_factory=dict)

    def observe(self, key: str, condition: bool) -> bool:
        """Record this window's ``condition`` for ``key``; True when it is now due.

        It stays due for every further window the condition holds; a window
        without it resets the streak.
        """
        if not condition:
            self.streaks.pop(key, None)
            return False
        self.streaks[key] = self.streaks.get(key, 0) + 1
        return self.streaks[key] >= self.windows_needed(key)

    def windows_needed(self, key: str) -> int:
        """Windows in a row ``key`` must hold."""
        return self.required.get(key, self.required.get(key.split(":", 1)[0], self.default))

    def streak(self, key: str) -> int:
        return self.streaks.get(key, 0)


@dataclass(frozen=True)
class Freshness:
    """How old a table's newest data is.

    Attributes:
        table: the table.
        age_seconds: now minus its newest commit (inf if it has none).
        max_age_seconds: the allowed age.
        stale: ``age_seconds > max_age_seconds``.
    """

    table: str
    age_seconds: float
    max_age_seconds: float
    stale: bool


def check_freshness(table: str, last_update: datetime | None, now: datetime, max_age_seconds: float) -> Freshness:
    """Is ``table`` older than ``max_age_seconds``? A table never written is stale."""
    age = math.inf if last_update is None else max(0.0, (now - last_update).total_seconds())
    return Freshness(table, age, max_age_seconds, age > max_age_seconds)


@dataclass(frozen=True)
class MissingRows:
    """Observed rows against the expected count.

    Attributes:
        observed: rows that arrived.
        expected: rows that should have.
        shortfall: ``1 - observed / expected`` (0 when nothing was expected).
        missing: short by more than the tolerance *and* by more than counting
            noise (3 * sqrt(expected), a Poisson bound), so small windows do not flap.
    """

    observed: int
    expected: float
    shortfall: float
    missing: bool


def check_missing_rows(
    observed: int, expected: float, tolerance: float = 0.05, noise_sigmas: float = 3.0
) -> MissingRows:
    """Are more than ``tolerance`` of the ``expected`` rows missing?"""
    if expected <= 0:
        return MissingRows(observed, expected, 0.0, False)
    gap = expected - observed
    shortfall = gap / expected
    missing = shortfall > tolerance and gap > noise_sigmas * math.sqrt(expected)
    return MissingRows(observed, expected, shortfall, missing)
