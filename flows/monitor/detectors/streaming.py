"""Concept drift on the per-prediction error stream: a one-sided CUSUM.

When labels arrive, each prediction becomes an error (0/1 misclassification, or
an absolute error for regression). Concept drift shows up as a rise of the
error mean while the features stay put, so it is a change-point problem on a
scalar stream. The CUSUM (Page, 1954) is the optimal detector for a known
pre-change mean and a designed post-change mean (Lorden/Moustakides): it
accumulates the log-likelihood ratio of "errors rose to the design level"
against "errors are at the baseline", resets at zero, and alarms above ``h``.
Wald's bound puts at least ``e^h`` samples between false alarms.

The baseline is estimated from the first ``warmup`` errors of the stream (the
model's own error level as served) and taken ``baseline_margin`` standard
errors above that estimate: a baseline estimated too low would let an
unchanged error rate push the statistic up and alarm. After an alarm the statistic restarts from
zero with the same baseline, so a drift that persists alarms again.

The whole state is a handful of numbers (``to_dict``/``from_dict``), so the
monitor persists it between runs.

Example:
    >>> detector = ErrorCusum(kind="bernoulli", warmup=1000, threshold=12.0)
    >>> first_alarm = detector.update_many(errors)  # index into ``errors``, or None
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

ErrorKind = Literal["bernoulli", "gaussian"]


@dataclass
class ErrorCusum:
    """One-sided CUSUM for a rise of the mean of an error stream.

    Attributes:
        kind: ``bernoulli`` for 0/1 errors, ``gaussian`` for continuous ones.
        warmup: errors used to estimate the baseline before any alarm.
        error_ratio: (bernoulli) the designed post-change error rate is the baseline times this.
        shift_sd: (gaussian) the designed rise of the mean, in baseline standard deviations.
        threshold: the alarm level ``h`` of the log-likelihood-ratio statistic.
        baseline_margin: standard errors added to the warm-up estimate of the baseline.
        seen: errors consumed since the start.
        baseline_n: errors in the baseline estimate so far.
        baseline_sum: their sum.
        baseline_sumsq: their sum of squares.
        statistic: the current CUSUM value.
        alarms: alarms raised so far.
        since_reset: errors consumed since the statistic last restarted.
    """

    kind: ErrorKind = "bernoulli"
    warmup: int = 1000
    error_ratio: float = 2.0
    shift_sd: float = 0.5
    threshold: float = 12.0
    baseline_margin: float = 2.0
    seen: int = 0
    baseline_n: int = 0
    baseline_sum: float = 0.0
    baseline_sumsq: float = 0.0
    statistic: float = 0.0
    alarms: int = 0
    since_reset: int = 0

    @property
    def ready(self) -> bool:
        """Whether the baseline is estimated and alarms can be raised."""
        return self.baseline_n >= self.warmup

    @property
    def baseline(self) -> float:
        """The warm-up estimate of the mean error (bernoulli: smoothed so it is never 0 or 1)."""
        if self.kind == "bernoulli":
            return (self.baseline_sum + 1.0) / (self.baseline_n + 2.0)
        return self.baseline_sum / self.baseline_n if self.baseline_n else 0.0

    def _baseline_sd(self) -> float:
        if self.kind == "bernoulli":
            p = self.baseline
            return math.sqrt(p * (1.0 - p))
        var = self.baseline_sumsq / self.baseline_n - self.baseline**2 if self.baseline_n else 0.0
        return math.sqrt(max(var, 1e-12))

    @property
    def reference(self) -> float:
        """The pre-change mean the statistic tests against: the baseline plus the margin."""
        margin = self.baseline_margin * self._baseline_sd() / math.sqrt(max(self.baseline_n, 1))
        value = self.baseline + margin
        return min(value, 1.0 - 1e-6) if self.kind == "bernoulli" else value

    def _scores(self, x: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Per-sample log-likelihood ratios of the designed change against the baseline."""
        if self.kind == "bernoulli":
            p0 = self.reference
            p1 = min(p0 * self.error_ratio, 1.0 - 1e-7)
            if p1 <= p0:  # the baseline is already ~1: no rise left to detect
                return np.full(x.shape, -1.0)
            up, down = math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))
            return np.where(x > 0.5, up, down)
        mean = self.reference
        sd = self._baseline_sd()
        delta = self.shift_sd
        return delta * ((x - mean) / sd) - delta * delta / 2.0

    def update_many(self, errors: ArrayLike) -> int | None:
        """Consume errors in order; return the index of the first alarm among them, or None.

        Later alarms in the same batch are counted in ``alarms`` (the statistic
        restarts after each).
        """
        x = np.asarray(errors, dtype=np.float64).ravel()
        first: int | None = None
        offset = 0
        if not self.ready:
            take = min(self.warmup - self.baseline_n, x.size)
            head = x[:take]
            self.baseline_n += int(take)
            self.baseline_sum += float(head.sum())
            self.baseline_sumsq += float(np.dot(head, head))
            self.seen += int(take)
            offset = take
        while offset < x.size:
            rest = x[offset:]
            # Lindley recursion S_t = max(0, S_{t-1} + l_t) in closed form:
            # with C_t = S_0 + cumsum(l), S_t = C_t - min(0, min_{k<=t} C_k).
            cum = self.statistic + np.cumsum(self._scores(rest))
            stat = cum - np.minimum(np.minimum.accumulate(cum), 0.0)
            over = np.flatnonzero(stat > self.threshold)
            if over.size == 0:
                self.statistic = float(stat[-1])
                self.seen += int(rest.size)
                self.since_reset += int(rest.size)
                return first
            hit = int(over[0])
            self.alarms += 1
            self.seen += hit + 1
            self.since_reset = 0
            self.statistic = 0.0
            if first is None:
                first = offset + hit
            offset += hit + 1
        return first

    def update(self, error: float) -> bool:
        """Consume one error; True when it raised an alarm."""
        return self.update_many([error]) is not None

    def to_dict(self) -> dict[str, Any]:
        """The full state as JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorCusum:
        """Restore a detector saved with ``to_dict``."""
        return cls(**dict(data))
