"""Assessing pure windows: latency, freshness, missing rows (no lake, no server)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa

from flows.monitor.detectors import MonitorThresholds
from flows.monitor.signals import Signal
from flows.monitor.state import MonitorState
from flows.monitor.window import MonitorWindow, assess
from tests.flows.monitor.fixtures import T0


def _window(minute: int, rows: int, latency: float, last_commit_minutes_ago: float = 1.0) -> MonitorWindow:
    rng = np.random.default_rng(minute)
    start, end = T0 + timedelta(minutes=minute - 1), T0 + timedelta(minutes=minute)
    table = pa.table(
        {
            "amount": rng.normal(50, 10, rows),
            "_latency_ms": rng.normal(latency, latency * 0.05, rows),
            "_served_by": ["primary"] * rows,
        }
    )
    return MonitorWindow(
        start=start,
        end=end,
        now=end,
        inference=table,
        drift_start=start,
        last_commits={"inference_log": end - timedelta(minutes=last_commit_minutes_ago)},
    )


def _assess_series(windows: list[MonitorWindow], t: MonitorThresholds) -> list[list[Signal]]:
    state, out = MonitorState(), []
    for w in windows:
        result = assess(w, state, t)
        state = result.state
        out.append(result.signals)
    return out


def test_latency_spike_needs_three_windows_in_a_row() -> None:
    t = MonitorThresholds()
    windows = [_window(m, 1000, 20.0) for m in range(1, 11)]
    windows += [_window(m, 1000, 200.0) for m in range(11, 14)]
    out = _assess_series(windows, t)
    assert all(not s for s in out[:12])
    assert [s.kind.value for s in out[12]] == ["latency"]


def test_row_drop_is_missing_rows_after_three_windows_and_old_table_is_stale() -> None:
    t = MonitorThresholds()
    windows = [_window(m, 1000, 20.0) for m in range(1, 10)]
    windows += [_window(10, 800, 20.0), _window(11, 800, 20.0), _window(12, 800, 20.0, last_commit_minutes_ago=90)]
    out = _assess_series(windows, t)
    assert all(not s for s in out[:11])
    assert {s.kind.value for s in out[11]} == {"missing_rows", "stale_data"}
