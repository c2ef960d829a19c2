"""Monitor thresholds from the config mapping: defaults, overrides, errors naming the key."""

from __future__ import annotations

import pytest

from flows.config import ConfigError
from flows.monitor.detectors import MonitorThresholds


def test_thresholds_from_mapping_defaults_and_overrides() -> None:
    t = MonitorThresholds.from_mapping({"drift": {"alpha": 0.05}, "consecutive": {"latency": 5}})
    assert t.drift.alpha == 0.05 and t.drift.numeric_effect_floor == 0.1
    assert t.consecutive_for("latency") == 5 and t.consecutive_for("data_drift") == 1
    assert t.consecutive_for("missing_rows:inference_log") == 3


@pytest.mark.parametrize(
    "data,key",
    [
        ({"drift": {"alpah": 0.05}}, "thresholds.drift.alpah"),
        ({"drift": {"alpha": 2.0}}, "thresholds.drift.alpha"),
        ({"unknown": 1}, "thresholds.unknown"),
        ({"consecutive": {"latency": 0}}, "consecutive.latency"),
        ({"consecutive": {"latncy": 2}}, "consecutive.latncy"),
    ],
)
def test_bad_thresholds_raise_config_error_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MonitorThresholds.from_mapping(data)
