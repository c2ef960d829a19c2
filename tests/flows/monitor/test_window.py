"""Assessing pure windows: latency, freshness, missing rows (no lake, no server)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa

from flows.monitor.detectors import MonitorThresholds
from flows.monitor.detectors.drift import ReferenceProfile
from flows.monitor.signals import Severity, Signal, SignalKind
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


def _confidently_wrong_batch(shift: float, wrong: float) -> MonitorWindow:
    """A landed batch judged as the pipeline does (``batch_pass``): its own labels, no prediction reference.

    The champion is sure of every answer (its estimate cannot fall); on ``wrong`` of the
    rows it is sure and wrong, as on a region it never saw.
    """
    rng = np.random.default_rng(31)
    n = 2000
    reference = pa.table({"amount": rng.normal(50, 10, 6000), "_batch_id": np.repeat(np.arange(6), 1000)})
    label = (rng.random(n) < 0.1).astype(float)
    flipped = rng.random(n) < wrong
    right = np.where(label == 1, rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.1, n))
    score = np.where(flipped, 1.0 - right, right)
    rows = pa.table(
        {"amount": rng.normal(50 + shift, 10, n), "_score": score, "_prediction": (score >= 0.5).astype(float)}
    )
    labels = pa.table(
        {
            "label": label,
            "_prediction": rows.column("_prediction"),
            "_score": score,
            "_model_version": ["1"] * n,
            "ts": [T0] * n,
        }
    )
    return MonitorWindow.of_batch(
        rows,
        labels,
        T0,
        ReferenceProfile.from_data(reference, MonitorThresholds().drift),
        {"roc_auc": 0.93},
        {"roc_auc": 0.076},  # holdout batches of 200 rows with a few positives vary that much
        "binary",
    )


def test_drift_is_felt_when_its_labels_show_the_model_worse_on_it_though_its_estimate_did_not_move() -> None:
    t = MonitorThresholds()
    felt = assess(_confidently_wrong_batch(shift=8.0, wrong=0.27), MonitorState(), t).signals
    unfelt = assess(_confidently_wrong_batch(shift=8.0, wrong=0.0), MonitorState(), t).signals

    drift = next(s for s in felt if s.kind == SignalKind.DATA_DRIFT)
    impact = drift.evidence["impact"]
    assert impact["estimated_drop"] is False and impact["labeled_drop"] is True and impact["reaches_model"] is True
    assert drift.severity == Severity.CRITICAL
    # within the holdout batches' spread: not a performance incident of its own
    assert SignalKind.PERFORMANCE_DROP not in {s.kind for s in felt}
    quiet = next(s for s in unfelt if s.kind == SignalKind.DATA_DRIFT)
    assert quiet.evidence["impact"]["reaches_model"] is False and quiet.severity == Severity.WARNING
