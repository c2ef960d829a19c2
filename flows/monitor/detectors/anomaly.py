"""Adaptive anomaly detection for operational series (one value per monitor window).

Latency p99, error rate, fallback share, row rate and null rates each form a
series; a new value is judged against the series' own recent past with a
robust z-score: ``(value - median) / (1.4826 * MAD)``. Median and MAD are not
dragged by the spikes they are meant to catch, and the scale has floors (a
share of the median and an absolute one per series) so a flat series does not
alarm on a wiggle.

Example:
    >>> score = robust_z([120, 118, 125, 121, 119, 122, 120, 123], 410.0, z=4.0)
    >>> score.anomalous, round(score.z, 1)
    (True, 107.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["up", "down", "both"]
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class AnomalyScore:
    """How unusual one value is against its history.

    Attributes:
        value: the new value.
        center: median of the history.
        scale: robust standard deviation (after floors).
        z: ``(value - center) / scale``.
        anomalous: ``|z|`` (in the watched direction) is above the threshold.
        history: values the judgement used.
    """

    value: float
    center: float
    scale: float
    z: float
    anomalous: bool
    history: int


def robust_z(
    history: Sequence[float],
    value: float,
    *,
    z: float = 4.0,
    direction: Direction = "up",
    min_history: int = 8,
    relative_floor: float = 0.1,
    absolute_floor: float = 0.0,
) -> AnomalyScore:
    """Judge ``value`` against ``history`` with a floored robust z-score.

    Args:
        history: past values of the series, oldest first (NaNs ignored).
        value: the new value.
        z: the alarm threshold.
        direction: which side alarms: ``up``, ``down`` or ``both``.
        min_history: fewer past values than this never alarm.
        relative_floor: the scale is at least this share of ``|median|``.
        absolute_floor: the scale is at least this, in the series' unit.
    """
    past = np.asarray([h for h in history if h is not None], dtype=np.float64)
    past = past[np.isfinite(past)]
    if past.size == 0 or not np.isfinite(value):
        return AnomalyScore(float(value), float("nan"), float("nan"), 0.0, False, int(past.size))
    center = float(np.median(past))
    mad = float(np.median(np.abs(past - center)))
    scale = max(_MAD_TO_SD * mad, relative_floor * abs(center), absolute_floor, 1e-12)
    score = (float(value) - center) / scale
    if direction == "up":
        hit = score > z
    elif direction == "down":
        hit = score < -z
    else:
        hit = abs(score) > z
    return AnomalyScore(float(value), center, scale, score, bool(hit and past.size >= min_history), int(past.size))


@dataclass
class SeriesHistory:
    """Bounded recent values of named series, kept in the monitor state.

    Example:
        >>> h = SeriesHistory(maxlen=30)
        >>> h.push("latency_p99_ms", 120.0)
        >>> h.values("latency_p99_ms")
        [120.0]
    """

    maxlen: int = 30
    series: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        if self.series is None:
            self.series = {}

    def values(self, name: str) -> list[float]:
        assert self.series is not None
        return list(self.series.get(name, []))

    def push(self, name: str, value: float) -> None:
        """Append ``value`` (kept only if finite) and drop the oldest beyond ``maxlen``."""
        assert self.series is not None
        if not np.isfinite(value):
            return
        kept = self.series.setdefault(name, [])
        kept.append(float(value))
        del kept[: max(0, len(kept) - self.maxlen)]

    def to_dict(self) -> dict[str, list[float]]:
        assert self.series is not None
        return {k: list(v) for k, v in self.series.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]], maxlen: int = 30) -> SeriesHistory:
        return cls(maxlen, {k: [float(x) for x in v][-maxlen:] for k, v in data.items()})
