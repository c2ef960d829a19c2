"""The release analysis' Argo-style verdicts (no server needed)."""

from __future__ import annotations

from flows.config import ReleaseConfig
from flows.release.analysis import Measurement, judge, tally


def _round(**phases: str) -> list[Measurement]:
    return [Measurement(metric, phase) for metric, phase in phases.items()]  # type: ignore[arg-type]


def test_verdicts_follow_failure_and_inconclusive_limits_then_count() -> None:
    config = ReleaseConfig(
        count=3,
        metrics={
            "error_rate": {"success_condition": "result <= 0", "failure_limit": 1},
            "latency_p99_ms": {"success_condition": "result <= 0", "inconclusive_limit": 1},
            "prediction_distance": {"enabled": False},
            "quality": {"enabled": False},
        },  # type: ignore[dict-item]
    )
    counts = tally({}, _round(error_rate="failed", latency_p99_ms="inconclusive"))
    assert judge(counts, 1, config) == ("continue", "1/3 measurements, no limit exceeded")
    failed = tally(counts, _round(error_rate="failed", latency_p99_ms="successful"))
    assert judge(failed, 2, config)[0] == "failed"  # 2 failures > failure_limit 1, at once
    unsure = tally(counts, _round(error_rate="successful", latency_p99_ms="inconclusive"))
    assert judge(unsure, 2, config) == ("inconclusive", "latency_p99_ms inconclusive 2 time(s) (limit 1)")
    good = tally(tally(counts, _round(error_rate="successful")), _round(error_rate="successful"))
    assert judge(good, 3, config)[0] == "successful"
