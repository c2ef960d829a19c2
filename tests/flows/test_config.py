"""The config's validation of what a person writes in selfheal.yaml."""

from __future__ import annotations

import pytest

from flows.config import ReleaseConfig


def test_config_refuses_a_bad_condition_and_accepts_argo_spelling() -> None:
    cfg = ReleaseConfig(metrics={"quality": {"successCondition": "result >= 0", "failureLimit": 2}})  # type: ignore[dict-item]
    assert cfg.metrics["quality"].success_condition == "result >= 0" and cfg.metrics["quality"].failure_limit == 2
    assert set(cfg.metrics) == {"error_rate", "latency_p99_ms", "prediction_distance", "quality"}
    with pytest.raises(ValueError, match="unknown name"):
        ReleaseConfig(metrics={"quality": {"failure_condition": "accuracy < 1"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown analysis metric"):
        ReleaseConfig(metrics={"throughput": {}})  # type: ignore[dict-item]
