"""deployments/prefect.yaml against a real Prefect server: `prefect deploy`, a process worker, real events."""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.processes import free_port, wait_until
from tests.deployments.conftest import (
    DEPLOYMENTS,
    PREFECT_FILE,
    PROJECT,
    PrefectServer,
    write_config,
)

SPEC: dict[str, Any] = yaml.safe_load(PREFECT_FILE.read_text())
ENTRIES: list[dict[str, Any]] = SPEC["deployments"]
CHAOS_TIMEZONE = "Europe/Berlin"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _function(entry: dict[str, Any]) -> str:
    return str(entry["entrypoint"].split(":")[1])


def _ident(entry: dict[str, Any]) -> str:
    return f"{_function(entry)}/{entry['name']}"


def _flow_file(entry: dict[str, Any]) -> Path:
    return PROJECT / str(entry["entrypoint"]).split(":")[0]


def _entry(entrypoint: str, pool: str) -> dict[str, Any]:
    return next(e for e in ENTRIES if e["entrypoint"] == entrypoint and e["name"] == pool)


# -- the file itself -------------------------------------------------------------------------
def test_each_flow_has_one_deployment_per_work_pool() -> None:
    flows = {
        "flows/pipeline/flow.py:pipeline_flow",
        "flows/monitor/flow.py:monitor_flow",
        "flows/healer/flow.py:healer_flow",
        "flows/chaos_suite/flow.py:chaos_suite_flow",
        "flows/release/controller.py:release_analysis_flow",
        "flows/gitops/flow.py:gitops_flow",
        "flows/batch/flow.py:batch_inference_flow",
    }
    for pool in ("local", "k8s"):
        found = sorted(e["entrypoint"] for e in ENTRIES if e["work_pool"]["name"] == pool and e["name"] == pool)
        assert found == sorted(flows), pool


@pytest.mark.parametrize("pool", ["local", "k8s"])
def test_how_each_deployment_starts(pool: str) -> None:
    pipeline = _entry("flows/pipeline/flow.py:pipeline_flow", pool)
    assert [t["expect"] for t in pipeline["triggers"]] == [["selfheal.landing.file.created"]]
    assert [s.get("interval") for s in pipeline["schedules"]] == [3600]
    monitor = _entry("flows/monitor/flow.py:monitor_flow", pool)
    assert "triggers" not in monitor and monitor["schedules"][0]["interval"] <= 300
    healer = _entry("flows/healer/flow.py:healer_flow", pool)
    assert "schedules" not in healer
    assert healer["triggers"][0]["expect"] == ["selfheal.signal.*"]
    assert healer["triggers"][0]["match"]["selfheal.severity"] == ["warning", "critical"]
    chaos = _entry("flows/chaos_suite/flow.py:chaos_suite_flow", pool)
    assert chaos["schedules"][0]["cron"] == "0 3 * * 1"  # Monday 03:00
    assert chaos["schedules"][0]["timezone"] == "{{ chaos_timezone.stdout }}"
    release = _entry("flows/release/controller.py:release_analysis_flow", pool)
    assert "schedules" not in release
    assert [t["expect"] for t in release["triggers"]] == [["selfheal.release.started"]]
    gitops = _entry("flows/gitops/flow.py:gitops_flow", pool)
    assert "triggers" not in gitops and [s["interval"] for s in gitops["schedules"]] == [180]  # Argo CD's default
    batch = _entry("flows/batch/flow.py:batch_inference_flow", pool)
    assert "triggers" not in batch and [s["interval"] for s in batch["schedules"]] == [3600]
    assert batch["parameters"] == {}  # the landing zone, into `predictions`


# -- against a real server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> dict[tuple[str, str], dict[str, Any]]:
    """Both work pools created and every deployment whose flow file exists deployed, by (entrypoint, name)."""
    from prefect.workers.process import ProcessWorker

    srv = prefect_server
    process_template = ProcessWorker.get_default_base_job_template()
    k8s_template = json.loads((DEPLOYMENTS / "work-pools" / "k8s.json").read_text())
    for name, kind, template in (("local", "process", process_template), ("k8s", "kubernetes", k8s_template)):
        srv.api("POST", "/work_pools/", json={"name": name, "type": kind, "base_job_template": template})
    names = [arg for e in ENTRIES if _flow_file(e).exists() for arg in ("--name", _ident(e).replace("_", "-"))]
    srv.prefect("deploy", "--prefect-file", str(PREFECT_FILE), *names, env={"SELFHEAL_CHAOS_TIMEZONE": CHAOS_TIMEZONE})
    automations = srv.api("POST", "/automations/filter", json={})
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for d in srv.api("POST", "/deployments/filter", json={}):
        d["automations"] = [a for a in automations if any(x.get("deployment_id") == d["id"] for x in a["actions"])]
        found[(d["entrypoint"], d["name"])] = d
    return found


@pytest.mark.integration
def test_work_pools_have_their_types(prefect_server: PrefectServer, deployed: dict[Any, Any]) -> None:
    pools = {p["name"]: p for p in prefect_server.api("POST", "/work_pools/filter", json={})}
    assert pools["local"]["type"] == "process"
    assert pools["k8s"]["type"] == "kubernetes"
    committed = json.loads((DEPLOYMENTS / "work-pools" / "k8s.json").read_text())
    assert pools["k8s"]["base_job_template"] == committed


@pytest.mark.integration
@pytest.mark.parametrize("entry", ENTRIES, ids=_ident)
def test_every_deployment_is_registered_with_its_schedule_and_trigger(
    entry: dict[str, Any], deployed: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert _flow_file(entry).exists(), f"{entry['entrypoint']}: flow file not written yet, so it cannot be deployed"
    d = deployed.get((entry["entrypoint"], entry["name"]))
    assert d is not None, f"{_ident(entry)} was not deployed"
    assert d["work_pool_name"] == entry["work_pool"]["name"]
    assert d["parameters"] == entry["parameters"]

    want_schedules = entry.get("schedules", [])
    got_schedules = [s["schedule"] for s in d["schedules"]]
    assert len(got_schedules) == len(want_schedules)
    for got, want in zip(got_schedules, want_schedules, strict=True):
        if "cron" in want:
            assert (got["cron"], got["timezone"]) == (want["cron"], CHAOS_TIMEZONE)
        else:
            assert got["interval"] == want["interval"]
    assert all(s["active"] for s in d["schedules"])

    want_triggers = entry.get("triggers", [])
    assert len(d["automations"]) == len(want_triggers)
    for automation, want in zip(d["automations"], want_triggers, strict=True):
        assert automation["name"] == want["name"] and automation["enabled"]
        trigger = automation["trigger"]
        assert trigger["expect"] == want["expect"]
        assert trigger["match"] == want["match"]
        assert trigger["posture"] == "Reactive" and trigger["threshold"] == 1

    assert d["global_concurrency_limit"]["limit"] == entry["concurrency_limit"]["limit"]
    assert d["concurrency_options"]["collision_strategy"] == entry["concurrency_limit"]["collision_strategy"]
    workdir = d["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert workdir == (str(PROJECT) if entry["name"] == "local" else "/opt/selfheal")


def _runs(srv: PrefectServer, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    body = {"deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "START_TIME_DESC"}
    return [
        r
        for r in srv.api("POST", "/flow_runs/filter", json=body)
        if (r["created_by"] or {}).get("type") == "AUTOMATION"
    ]


def _quiet_the_scheduled(srv: PrefectServer, deployed: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Pause the monitor and gitops: their runs read ./selfheal.yaml (./.selfheal), which a test must not write to."""
    for entrypoint in ("flows/monitor/flow.py:monitor_flow", "flows/gitops/flow.py:gitops_flow"):
        quiet = deployed[(entrypoint, "local")]
        srv.api("PATCH", f"/deployments/{quiet['id']}", json={"paused": True})
        body = {
            "deployments": {"id": {"any_": [quiet["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        }
        for run in srv.api("POST", "/flow_runs/filter", json=body):
            srv.api("DELETE", f"/flow_runs/{run['id']}")


@pytest.mark.integration
@pytest.mark.slow
def test_a_landed_file_runs_the_pipeline_deployment_through_a_process_worker(
    prefect_server: PrefectServer, deployed: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    srv = prefect_server
    _quiet_the_scheduled(srv, deployed)
    config = write_config(tmp_path, free_port())
    env = {"SELFHEAL_CONFIG": str(config)}
    py = sys.executable
    srv.processes.run([py, "-m", "flows.cli", "data", "generate", "--batches", "1", "--rows", "2000"], env=env)
    worker = srv.processes.start(
        "worker", [py, "-m", "prefect", "worker", "start", "--pool", "local", "--type", "process"], env=env
    )
    watcher = srv.processes.start(
        "watcher",
        [py, "-m", "flows.cli", "watch-landing", str(tmp_path / "state" / "landing"), "--interval", "0.5"],
        env=env,
    )
    pipeline = deployed[("flows/pipeline/flow.py:pipeline_flow", "local")]
    try:
        run = wait_until(lambda: _runs(srv, pipeline), 60, "the landing event to start a pipeline run")[0]
        assert run["created_by"]["display_value"] == "selfheal-pipeline/local on a new landing file"
        done = wait_until(
            lambda: (r := srv.api("GET", f"/flow_runs/{run['id']}"))["state_type"] in TERMINAL and r,
            180,
            "the pipeline run to finish",
            interval=1.0,
        )
        assert done["state_type"] == "COMPLETED", worker.tail()
    finally:
        watcher.stop()
        worker.stop()
    assert (tmp_path / "state" / "lake" / "bronze" / "_delta_log").is_dir()
    announced = json.loads((tmp_path / "state" / "run" / "landing-announced.json").read_text())
    assert list(announced) == ["batch-00000.parquet"]


@pytest.mark.integration
def test_a_warning_or_critical_signal_event_starts_the_healer(
    prefect_server: PrefectServer, deployed: dict[tuple[str, str], dict[str, Any]]
) -> None:
    srv = prefect_server
    assert _flow_file(_entry("flows/healer/flow.py:healer_flow", "local")).exists()
    healer = deployed[("flows/healer/flow.py:healer_flow", "local")]
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": "selfheal.signal.data_drift",
            "resource": {"prefect.resource.id": "selfheal.signal.data_drift", "selfheal.severity": severity},
            "payload": {"evidence": {"drift_share": 0.5}},
        }
        for severity in ("info", "critical")
    ]
    srv.api("POST", "/events", json=events)
    wait_until(lambda: _runs(srv, healer), 60, "the signal event to start a healer run")
    time.sleep(1.0)  # room for a wrong second run to show up
    runs = _runs(srv, healer)
    assert len(runs) == 1, "an info signal must not start the healer"
    assert runs[0]["created_by"]["display_value"] == "selfheal-healer/local on a monitor signal"
