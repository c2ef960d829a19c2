"""Signals are small JSON-able records the healer can rebuild exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from flows.monitor.signals import Severity, Signal, SignalKind, Window

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_signal_round_trips_through_json() -> None:
    s = Signal(
        SignalKind.DATA_DRIFT,
        Severity.CRITICAL,
        {"features": ("amount",), "share": np.float64(0.25), "p": float("nan"), "n": np.int64(3)},
        Window(T0, T0 + timedelta(minutes=5)),
        detected_at=T0 + timedelta(minutes=5),
    )
    back = Signal.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    assert back.evidence == {"features": ["amount"], "share": 0.25, "p": None, "n": 3}
    assert back.kind is SignalKind.DATA_DRIFT and back.window.seconds == 300.0


def test_strings_are_accepted_and_naive_times_are_utc() -> None:
    s = Signal("latency", "warning", {}, Window(datetime(2025, 1, 1), datetime(2025, 1, 1, 0, 1)))  # type: ignore[arg-type]
    assert s.kind is SignalKind.LATENCY and s.severity is Severity.WARNING
    assert s.window.start.tzinfo is UTC
    assert Severity.CRITICAL.rank > Severity.WARNING.rank > Severity.INFO.rank


def test_bad_kind_and_backwards_window_are_refused() -> None:
    with pytest.raises(ValueError):
        Signal.from_dict(
            {
                "kind": "gremlins",
                "severity": "info",
                "window": {"start": "2025-01-01T00:00:00+00:00", "end": "2025-01-01T00:00:00+00:00"},
            }
        )
    with pytest.raises(ValueError):
        Window(T0, T0 - timedelta(seconds=1))


def test_every_kind_the_healer_expects_exists() -> None:
    assert {k.value for k in SignalKind} == {
        "data_drift",
        "prediction_drift",
        "concept_drift",
        "performance_drop",
        "latency",
        "error_rate",
        "breaker_open",
        "stale_data",
        "missing_rows",
        "data_quality",
        "serving_down",
        "upstream_outage",
        "model_refused",
        "lake_corrupted",
        "model_mismatch",
        "output_delivery",
    }
