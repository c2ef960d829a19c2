"""Robust z-scores against a bounded history."""

from __future__ import annotations

from flows.monitor.detectors import SeriesHistory, robust_z


def test_robust_z_flags_spike_but_not_wiggle() -> None:
    history = [120.0, 118, 125, 121, 119, 122, 120, 123]
    assert robust_z(history, 410.0).anomalous
    assert not robust_z(history, 126.0).anomalous
    assert not robust_z(history, 40.0).anomalous  # direction "up"
    assert robust_z(history, 40.0, direction="both").anomalous


def test_robust_z_needs_history_and_respects_floors() -> None:
    assert not robust_z([100.0] * 3, 1000.0).anomalous  # too little history
    flat = [0.0] * 20
    assert not robust_z(flat, 0.005, absolute_floor=0.01).anomalous
    assert robust_z(flat, 0.2, absolute_floor=0.01).anomalous
    assert not robust_z([100.0] * 20, 105.0, relative_floor=0.1).anomalous


def test_series_history_is_bounded_and_round_trips() -> None:
    h = SeriesHistory(maxlen=3)
    for v in [1.0, 2.0, float("nan"), 3.0, 4.0]:
        h.push("s", v)
    assert h.values("s") == [2.0, 3.0, 4.0]
    assert SeriesHistory.from_dict(h.to_dict(), 3).values("s") == [2.0, 3.0, 4.0]
