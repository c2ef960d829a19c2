"""Flow runs selfheal starts in-process: no flow-run heartbeats unless the user chose them."""

from __future__ import annotations

from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

from flows.prefect_runs import flow_settings, heartbeats_chosen, in_process_runs


@flow
def heartbeat_seen() -> int | None:
    """The heartbeat frequency a real flow run sees."""
    return get_current_settings().flows.heartbeat_frequency


def test_in_process_runs_turn_heartbeats_off_unless_the_user_set_them(prefect_harness: None) -> None:
    outside = heartbeat_seen()
    assert outside is not None  # Prefect's default: a heartbeat every 180 s
    with in_process_runs():
        assert heartbeat_seen() is None
    assert heartbeat_seen() == outside  # only the enclosed runs change
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert heartbeats_chosen()
        with in_process_runs():
            assert heartbeat_seen() == 60  # a frequency the user chose is kept


def test_a_deferred_command_gets_the_settings_for_the_flows_it_runs(prefect_harness: None) -> None:
    """``selfheal heal``/``monitor`` defer Prefect's import; the flow a remedy runs still has no heartbeats."""
    with in_process_runs(defer=True), flow_settings():
        assert heartbeat_seen() is None
    with flow_settings():  # outside a command (a deployment run, a test): Prefect's own setting
        assert heartbeat_seen() is not None
