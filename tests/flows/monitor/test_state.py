"""The monitor's state file."""

from __future__ import annotations

from flows.monitor.state import MonitorState
from tests.flows.monitor.fixtures import T0


def test_state_json_round_trip() -> None:
    state = MonitorState(seq=3, inference_watermark=T0, concept={"1": {"seen": 5}}, streaks={"latency": 2})
    assert MonitorState.from_json(state.to_json()) == state
