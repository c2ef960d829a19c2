"""The extension's surface: the exact activity list, and the conventions every activity keeps."""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any

import pytest

import chaos

#: (module, activity): exactly what discovery must show, one row per activity.
ACTIVITIES = [
    ("chaos.serving.actions", "hang_worker"),
    ("chaos.serving.actions", "kill_replica"),
    ("chaos.serving.actions", "kill_server"),
    ("chaos.serving.actions", "kill_worker"),
    ("chaos.serving.actions", "release_hung_worker"),
    ("chaos.serving.actions", "start_server_if_down"),
    ("chaos.serving.probes", "availability"),
    ("chaos.serving.probes", "availability_during_fault"),
    ("chaos.serving.probes", "predictions_lost"),
    ("chaos.serving.probes", "seconds_until_availability"),
    ("chaos.serving.probes", "seconds_until_model_quality"),
    ("chaos.serving.probes", "seconds_until_servers_ready"),
    ("chaos.serving.probes", "seconds_until_serving_answers"),
    ("chaos.serving.probes", "seconds_until_worker_replaced"),
    ("chaos.serving.probes", "seconds_until_workers"),
    ("chaos.network.actions", "create_link"),
    ("chaos.network.actions", "cut_link"),
    ("chaos.network.actions", "remove_link"),
    ("chaos.network.actions", "restore_link"),
    ("chaos.network.actions", "start_in_namespace"),
    ("chaos.network.actions", "throttle_link"),
    ("chaos.network.probes", "link_status"),
    ("chaos.network.probes", "seconds_until_reachable"),
    ("chaos.data.actions", "add_non_file_entries"),
    ("chaos.data.actions", "corrupt_batch"),
    ("chaos.data.actions", "inject_drift"),
    ("chaos.data.actions", "land_batch_in_pieces"),
    ("chaos.data.actions", "land_batches"),
    ("chaos.data.actions", "land_renamed_batch"),
    ("chaos.data.actions", "remove_injected_batches"),
    ("chaos.data.probes", "rows_awaiting_a_person"),
    ("chaos.data.actions", "resend_batch"),
    ("chaos.data.probes", "rows_lost"),
    ("chaos.data.probes", "seconds_until_fault_rows_landed_once"),
    ("chaos.data.probes", "seconds_until_no_rows_lost"),
    ("chaos.data.probes", "seconds_until_renamed_rows_landed"),
    ("chaos.registry.actions", "make_tracking_store_unreachable"),
    ("chaos.registry.actions", "promote_bad_model"),
    ("chaos.registry.actions", "promote_foreign_model"),
    ("chaos.registry.actions", "remove_foreign_model"),
    ("chaos.registry.actions", "restore_champion"),
    ("chaos.registry.actions", "restore_champion_before_fault"),
    ("chaos.registry.actions", "restore_tracking_store"),
    ("chaos.registry.probes", "champion_version"),
    ("chaos.registry.probes", "seconds_until_champion_is_not_bad"),
    ("chaos.registry.probes", "seconds_until_foreign_model_refused"),
    ("chaos.registry.probes", "seconds_until_tracking_store_answers"),
    ("chaos.pipeline.actions", "kill_pipeline_run"),
    ("chaos.pipeline.actions", "run_pipeline_if_behind"),
    ("chaos.pipeline.actions", "set_aside_torn_commit"),
    ("chaos.pipeline.actions", "tear_newest_commit"),
    ("chaos.pipeline.probes", "seconds_until_pipeline_caught_up"),
    ("chaos.incidents.probes", "open_incidents"),
    ("chaos.incidents.probes", "seconds_incident_stays_open"),
    ("chaos.incidents.probes", "seconds_until_incident_names_fault"),
    ("chaos.incidents.probes", "seconds_until_incident_resolved"),
    ("chaos.incidents.probes", "seconds_until_incident_resolved_after_restore"),
    ("chaos.release.actions", "end_release"),
    ("chaos.release.actions", "release_worse_model"),
    ("chaos.release.probes", "release_state"),
    ("chaos.release.probes", "seconds_until_release_rolled_back"),
    ("chaos.incidents.actions", "approve_when_proposed"),
    ("chaos.incidents.actions", "require_approval"),
    ("chaos.incidents.actions", "restore_healer"),
    ("chaos.gitops.actions", "deploy_from_git"),
    ("chaos.gitops.actions", "drift_definitions"),
    ("chaos.gitops.actions", "restore_definitions"),
    ("chaos.gitops.actions", "start_watcher"),
    ("chaos.gitops.actions", "stop_watcher"),
    ("chaos.gitops.probes", "seconds_until_definitions_restored"),
    ("chaos.golden.actions", "ensure_rollback_target"),
    ("chaos.golden.actions", "restore_served_model"),
    ("chaos.golden.actions", "swap_served_model"),
    ("chaos.golden.probes", "seconds_until_golden_set_answered"),
    ("chaos.batch.actions", "restore_output_table"),
    ("chaos.batch.actions", "score_during_output_outage"),
    ("chaos.batch.probes", "seconds_until_batch_rows_landed_once"),
    ("chaos.topology.actions", "kill_worker_of_running_run"),
    ("chaos.topology.actions", "restart_killed_worker"),
    ("chaos.topology.actions", "start_object_store"),
    ("chaos.topology.actions", "start_postgres"),
    ("chaos.topology.actions", "stop_object_store"),
    ("chaos.topology.actions", "stop_postgres"),
    ("chaos.topology.probes", "seconds_object_store_stays_down"),
]
EXPECTED = {module: [name for m, name in ACTIVITIES if m == module] for module, _ in ACTIVITIES}


def test_discovery_lists_exactly_these_activities() -> None:
    found = {(a["mod"], a["name"], a["type"]) for a in chaos.load_exported_activities()}
    expected = {(m, n, "action" if m.endswith(".actions") else "probe") for m, n in ACTIVITIES}
    assert found == expected


def test_discover_describes_the_extension() -> None:
    discovery = chaos.discover(discover_system=False)
    assert discovery["extension"]["name"] == "selfheal-chaos"
    assert len(discovery["activities"]) == len(ACTIVITIES)


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_lists_exactly_the_public_functions(module: str) -> None:
    mod = importlib.import_module(module)
    public = sorted(
        name
        for name, obj in vars(mod).items()
        if inspect.isfunction(obj) and obj.__module__ == module and not name.startswith("_")
    )
    assert sorted(mod.__all__) == public == EXPECTED[module]


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


@pytest.mark.parametrize(("module", "name"), ACTIVITIES)
def test_activity_conventions(module: str, name: str) -> None:
    func = getattr(importlib.import_module(module), name)
    assert inspect.getdoc(func), f"{name} has no docstring (discovery shows it)"
    hints = typing.get_type_hints(func)
    params = list(inspect.signature(func).parameters.values())
    for param in params:
        assert param.name != "all", "a parameter named `all` shadows the builtin"
        assert param.name in hints, f"{name}({param.name}) is not annotated"
        if param.default is None:
            assert _allows_none(hints[param.name]), f"{name}({param.name}=None) needs an explicit `| None`"
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{name}({param.name}) must be plain"
    names = [p.name for p in params]
    tail = [n for n in names if n in ("configuration", "secrets")]
    assert names[len(names) - len(tail) :] == tail, f"{name}: configuration/secrets must come last"
    assert "return" in hints


def test_chaos_never_imports_flows() -> None:
    """The extension runs without Prefect: no module under chaos/ imports flows."""
    import pathlib
    import re

    root = pathlib.Path(chaos.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+(flows|prefect)\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
