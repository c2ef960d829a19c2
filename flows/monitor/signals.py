"""Signals: what the monitor noticed, in the shape the healer consumes.

A ``Signal`` is a small frozen, JSON-able record: its kind (what is wrong), its
severity, the evidence (numbers a person or the diagnosis can check) and the
window of data it is about.

Example:
    >>> s = Signal(SignalKind.DATA_DRIFT, Severity.CRITICAL, {"features": ["amount"]}, Window(t0, t1))
    >>> Signal.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class SignalKind(StrEnum):
    """What the monitor noticed."""

    DATA_DRIFT = "data_drift"
    PREDICTION_DRIFT = "prediction_drift"
    CONCEPT_DRIFT = "concept_drift"
    PERFORMANCE_DROP = "performance_drop"
    LATENCY = "latency"
    ERROR_RATE = "error_rate"
    BREAKER_OPEN = "breaker_open"
    STALE_DATA = "stale_data"
    MISSING_ROWS = "missing_rows"
    DATA_QUALITY = "data_quality"
    SERVING_DOWN = "serving_down"
    UPSTREAM_OUTAGE = "upstream_outage"
    MODEL_REFUSED = "model_refused"
    """The server refused to load @champion (foreign artifact store, pickle, untrusted type)."""
    LAKE_CORRUPTED = "lake_corrupted"
    """A stage table's newest commit cannot be read (a torn log entry: a crashed writer, a damaged disk)."""
    MODEL_MISMATCH = "model_mismatch"
    """The live server's answers to the champion's golden set differ from those frozen at its promotion."""
    OUTPUT_DELIVERY = "output_delivery"
    """Batch predictions whose delivery failed (write or model) wait in the dead-letter queue past a grace period."""


class Severity(StrEnum):
    """How urgent a signal is; ordered ``INFO < WARNING < CRITICAL``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "critical": 2}[self.value]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A half-open time range ``(start, end]`` of the data a signal is about (UTC).

    Example:
        >>> Window(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, 0, 5, tzinfo=UTC)).seconds
        300.0
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc(self.start))
        object.__setattr__(self, "end", _utc(self.end))
        if self.end < self.start:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Window:
        return cls(datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"]))


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars made Python, non-finite floats None, tuples lists, times ISO."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


@dataclass(frozen=True)
class Signal:
    """One thing the monitor noticed.

    Attributes:
        kind: what is wrong.
        severity: how urgent.
        evidence: JSON-able numbers and names backing the signal (made JSON-able on creation).
        window: the data window it is about.
        source: who raised it (``monitor`` by default).
        detected_at: when it was raised (UTC).

    Example:
        >>> Signal(SignalKind.LATENCY, Severity.WARNING, {"p99_ms": 840.0}, window).to_dict()["kind"]
        'latency'
    """

    kind: SignalKind
    severity: Severity
    evidence: Mapping[str, Any] = field(hash=False)
    window: Window
    source: str = "monitor"
    detected_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SignalKind(self.kind))
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "evidence", jsonable(dict(self.evidence)))
        object.__setattr__(self, "detected_at", _utc(self.detected_at))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able mapping; ``Signal.from_dict`` reverses it."""
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "evidence": dict(self.evidence),
            "window": self.window.to_dict(),
            "source": self.source,
            "detected_at": self.detected_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signal:
        """Rebuild a signal from ``to_dict`` output.

        Raises:
            ValueError: an unknown kind or severity, or a malformed window.
        """
        return cls(
            kind=SignalKind(data["kind"]),
            severity=Severity(data["severity"]),
            evidence=dict(data.get("evidence") or {}),
            window=Window.from_dict(data["window"]),
            source=str(data.get("source", "monitor")),
            detected_at=datetime.fromisoformat(data["detected_at"]) if data.get("detected_at") else datetime.now(UTC),
        )

    def summary(self) -> str:
        """One line for logs and reports."""
        keys = ", ".join(f"{k}={v}" for k, v in list(self.evidence.items())[:4])
        return f"{self.severity.value.upper()} {self.kind.value}: {keys}"
