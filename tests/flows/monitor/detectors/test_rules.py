"""Window rules: consecutive windows, freshness, missing rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flows.monitor.detectors import ConsecutiveWindows, check_freshness, check_missing_rows


def test_consecutive_windows_rule() -> None:
    rule = ConsecutiveWindows({"latency": 3})
    assert [rule.observe("latency", True) for _ in range(4)] == [False, False, True, True]
    assert rule.observe("latency", False) is False and rule.streak("latency") == 0
    assert rule.observe("data_drift", True) is True  # unlisted: one window
    assert rule.windows_needed("latency:p99") == 3  # a qualified key falls back to its kind


def test_freshness_and_missing_rows() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert check_freshness("t", now - timedelta(hours=2), now, 3600).stale
    assert not check_freshness("t", now - timedelta(minutes=5), now, 3600).stale
    assert check_freshness("t", None, now, 3600).stale
    assert check_missing_rows(900, 1000).missing  # 10% short, beyond noise
    assert not check_missing_rows(960, 1000).missing  # 4% short: within tolerance
    assert not check_missing_rows(8, 10).missing  # 20% short but within counting noise
    assert check_missing_rows(9_400, 10_000).missing
