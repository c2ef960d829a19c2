"""GitOps (issue 21) against a real Prefect server and a real MLflow store: drift made by hand is
reverted as a config_drift incident, a change committed to git is applied instead, and with
``self_heal: false`` drift is only reported.

The desired state is a git repository of its own holding this project's prefect.yaml and
flow files; the server's deployments are made by the real ``prefect deploy`` of that file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpoints.incidents import State
from flows.config import SelfhealConfig, load_config
from flows.gitops.desired import MONITOR_FLOW, monitor_parameters
from flows.gitops.reconcile import CAUSE, REMEDY, Reconciler
from flows.registry import CHAMPION, Registry
from tests.deployments.conftest import PREFECT_FILE, PROJECT, PrefectServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "gitops-model"
LOCAL = [e for e in yaml.safe_load(PREFECT_FILE.read_text())["deployments"] if e["work_pool"]["name"] == "local"]
FLOWS = [
    "selfheal-pipeline",
    MONITOR_FLOW,
    "selfheal-healer",
    "selfheal-chaos-suite",
    "selfheal-release-analysis",
    "selfheal-gitops",
    "selfheal-batch-inference",
]


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


@dataclass
class World:
    srv: PrefectServer
    repo: Path
    cfg: SelfhealConfig
    registry: Registry

    def reconciler(self, **gitops: Any) -> Reconciler:
        cfg = self.cfg.model_copy(update={"gitops": self.cfg.gitops.model_copy(update=gitops)})
        return Reconciler(cfg, self.srv.url, base=self.repo)

    def deployment(self, flow_name: str) -> dict[str, Any]:
        flows = {f["id"]: f["name"] for f in self.srv.api("POST", "/flows/filter", json={})}
        body = {"work_pools": {"name": {"any_": ["local"]}}}
        found = [d for d in self.srv.api("POST", "/deployments/filter", json=body) if flows[d["flow_id"]] == flow_name]
        assert len(found) == 1, found
        return found[0]

    def automation(self, deployment: dict[str, Any]) -> dict[str, Any]:
        return next(
            a
            for a in self.srv.api("POST", "/automations/filter", json={})
            if any(act.get("deployment_id") == deployment["id"] for act in a["actions"])
        )

    def commit(self, message: str) -> str:
        _git(self.repo, "commit", "-qam", message)
        return _git(self.repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def world(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from mlflow import MlflowClient
    from prefect.workers.process import ProcessWorker

    folder = tmp_path_factory.mktemp("gitops")
    repo = folder / "repo"
    for path in ["deployments/prefect.yaml", *{str(e["entrypoint"]).split(":")[0] for e in LOCAL}]:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / path, repo / path)
    # The pool's template in git: the process worker's default with a variable's default changed, so
    # that it is told apart from what Prefect would make by itself.
    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["stream_output"]["default"] = False
    (repo / "deployments" / "work-pools").mkdir(parents=True)
    (repo / "deployments" / "work-pools" / "local.json").write_text(json.dumps(template, indent=2))
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    settings = {
        "home": str(folder / "home"),
        "model_name": MODEL,
        "tracking_uri": tracking_uri,
        "lake": {"root": str(folder / "lake")},
        "gitops": {"repo": str(repo), "interval_seconds": 5, "self_heal": True},
    }
    # The config a deployment's runs read, kept in git too: its healing rules are desired state.
    (repo / "selfheal.yaml").write_text(yaml.safe_dump({**settings, "healing": {"max_attempts": 2}}))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "the deployments")
    srv = prefect_server
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, source=str(folder / "artifacts"))
    registry = Registry(tracking_uri, MODEL)
    registry.promote("1")
    registry.promote("2")  # the gate's last decision: version 2
    cfg = SelfhealConfig(**settings)
    world = World(srv, repo, cfg, registry)
    created = world.reconciler().tick(deploy_missing=True)  # the pool and its deployments, from the commit
    assert created.incident is None and created.reverted == []
    assert {(d.target, d.field) for d in created.applied_from_git} == {
        *((f"{flow}/local", "missing") for flow in FLOWS),
        (f"{MONITOR_FLOW}/local", "parameters"),  # prefect.yaml's defaults, then the config's, as `up` sets them
    }
    assert world.deployment(MONITOR_FLOW)["parameters"] == monitor_parameters(cfg)
    assert srv.api("GET", "/work_pools/local")["base_job_template"] == template  # git's, not Prefect's default
    yield world


def _drift_by_hand(world: World) -> dict[str, Any]:
    """Pause the monitor, change a pipeline parameter, turn the healer's trigger off, move the champion alias."""
    srv = world.srv
    monitor, pipeline = world.deployment(MONITOR_FLOW), world.deployment("selfheal-pipeline")
    healer_trigger = world.automation(world.deployment("selfheal-healer"))
    srv.api("PATCH", f"/deployments/{monitor['id']}", json={"paused": True})
    srv.api("PATCH", f"/deployments/{pipeline['id']}", json={"parameters": {"config_path": "/tmp/elsewhere.yaml"}})
    srv.api("PATCH", f"/automations/{healer_trigger['id']}", json={"enabled": False})
    world.registry.set_alias(CHAMPION, "1")  # by hand: no gate decision
    return {"monitor": monitor, "pipeline": pipeline, "trigger": healer_trigger}


def test_live_deployed_from_git_is_in_sync(world: World) -> None:
    reconciler = world.reconciler()
    assert [d.describe() for d in reconciler.diff()] == []
    report = reconciler.tick()
    assert report.incident is None and reconciler.synced_revision() == report.revision


def test_drift_made_by_hand_is_reverted_as_an_incident_with_its_mttr(world: World) -> None:
    reconciler = world.reconciler()
    changed = datetime.now(UTC)
    before = _drift_by_hand(world)
    time.sleep(1.0)  # the MTTR counts from the change, not from the pass that saw it
    found = {(d.target, d.field) for d in reconciler.diff()}
    assert found == {
        ("selfheal-monitor/local", "paused"),
        ("selfheal-pipeline/local", "parameters"),
        ("selfheal-healer/local", "trigger:selfheal-healer/local on a monitor signal"),
        ("alias:champion", "champion"),
    }
    ticked = datetime.now(UTC)
    report = reconciler.tick()
    incident = report.incident
    assert incident is not None and incident.cause == CAUSE and incident.state == State.RESOLVED
    assert changed - timedelta(seconds=1) <= incident.detected_at <= ticked - timedelta(seconds=0.9)
    assert incident.remedies_tried == [REMEDY] and incident.mttr_seconds is not None
    assert len(report.reverted) == 4
    assert world.deployment(MONITOR_FLOW)["paused"] is False
    assert world.deployment("selfheal-pipeline")["parameters"] == {}
    assert world.srv.api("GET", f"/automations/{before['trigger']['id']}")["enabled"] is True
    champion = world.registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "2"
    assert reconciler.diff() == [] and reconciler.tick().incident is None  # nothing left, nothing reopened


def test_with_self_heal_off_drift_is_only_reported(world: World) -> None:
    reconciler = world.reconciler(self_heal=False)
    monitor = world.deployment(MONITOR_FLOW)
    world.srv.api("PATCH", f"/deployments/{monitor['id']}", json={"paused": True})
    for _ in range(2):
        report = reconciler.tick()
        assert report.incident is not None and report.incident.state == State.DIAGNOSED
        assert report.reverted == [] and world.deployment(MONITOR_FLOW)["paused"] is True
    world.srv.api("PATCH", f"/deployments/{monitor['id']}", json={"paused": False})  # a person puts it back
    report = reconciler.tick()
    assert report.incident is not None and report.incident.state == State.RESOLVED
    assert report.incident.remedies_tried == []


def test_a_deployment_moved_to_another_pool_comes_back_and_prune_removes_what_git_lacks(world: World) -> None:
    from prefect.workers.process import ProcessWorker

    srv = world.srv
    template = ProcessWorker.get_default_base_job_template()
    srv.api("POST", "/work_pools/", json={"name": "elsewhere", "type": "process", "base_job_template": template})
    healer = world.deployment("selfheal-healer")
    srv.api("PATCH", f"/deployments/{healer['id']}", json={"work_pool_name": "elsewhere"})
    srv.api("PATCH", "/work_pools/local", json={"base_job_template": template})  # Prefect's default, by hand
    flow = srv.api("POST", "/flows/", json={"name": "made-by-hand"})
    stray = srv.api("POST", "/deployments/", json={"name": "local", "flow_id": flow["id"], "work_pool_name": "local"})
    report = world.reconciler().tick()
    assert report.incident is not None and report.incident.state == State.RESOLVED
    assert [(d.target, d.field) for d in report.reverted] == [
        ("selfheal-healer/local", "work_pool_name"),
        ("pool:local", "base_job_template"),
    ]
    assert "variables.properties.stream_output.default" in report.reverted[1].describe()
    assert world.deployment("selfheal-healer")["id"] == healer["id"]  # back on the local pool
    in_git = json.loads((world.repo / "deployments" / "work-pools" / "local.json").read_text())
    assert srv.api("GET", "/work_pools/local")["base_job_template"] == in_git
    assert [(d.target, d.field) for d in world.reconciler().diff()] == [("made-by-hand/local", "extra")]  # reported
    report = world.reconciler(prune=True).tick()
    assert [(d.target, d.field) for d in report.reverted] == [("made-by-hand/local", "extra")]
    assert report.incident is not None and report.incident.state == State.RESOLVED
    assert srv.api("POST", "/deployments/filter", json={"deployments": {"id": {"any_": [stray["id"]]}}}) == []
    assert world.reconciler().diff() == []


def test_a_change_committed_to_git_is_applied_not_reverted(world: World) -> None:
    reconciler = world.reconciler()
    assert reconciler.tick().incident is None
    prefect_file = world.repo / "deployments" / "prefect.yaml"
    prefect_file.write_text(prefect_file.read_text().replace("interval: 60\n", "interval: 120\n", 1))
    revision = world.commit("the monitor every 2 minutes")
    report = reconciler.tick()
    assert [(d.target, d.field) for d in report.applied_from_git] == [("selfheal-monitor/local", "schedules")]
    assert report.incident is None and report.reverted == []
    schedules = world.deployment(MONITOR_FLOW)["schedules"]
    assert [(s["schedule"]["interval"], s["active"]) for s in schedules] == [(120.0, True)]
    assert reconciler.synced_revision() == revision and reconciler.diff() == []
    # The same field changed by hand now is drift against the new commit: reverted to 120 s, not 60 s.
    world.srv.api("DELETE", f"/deployments/{world.deployment(MONITOR_FLOW)['id']}/schedules/{schedules[0]['id']}")
    report = reconciler.tick()
    assert report.incident is not None and report.incident.state == State.RESOLVED
    schedules = world.deployment(MONITOR_FLOW)["schedules"]
    assert [(s["schedule"]["interval"], s["active"]) for s in schedules] == [(120.0, True)]


def test_the_gitops_flow_reverts_drift_in_one_run_and_skips_without_a_checkout(
    world: World, prefect_harness: None, tmp_path: Path
) -> None:
    """The ``selfheal-gitops`` deployment's flow: one pass per run (its own run tracked by the test harness)."""
    from flows.gitops.flow import gitops_flow

    spec = {
        "home": world.cfg.home,
        "model_name": MODEL,
        "tracking_uri": world.cfg.tracking_uri,
        "lake": {"root": world.cfg.lake.root},
        "gitops": {"repo": str(world.repo), "self_heal": True},
    }
    config = tmp_path / "selfheal.yaml"
    config.write_text(yaml.safe_dump(spec))
    monitor = world.deployment(MONITOR_FLOW)
    world.srv.api("PATCH", f"/deployments/{monitor['id']}", json={"paused": True})
    done = gitops_flow(config_path=str(config), api_url=world.srv.url)
    assert done["reverted"] == ["selfheal-monitor/local: paused is true, git says false"]
    assert done["incident"]["state"] == "RESOLVED"
    assert world.deployment(MONITOR_FLOW)["paused"] is False

    config.write_text(yaml.safe_dump({**spec, "gitops": {"repo": str(tmp_path)}}))  # not a git checkout
    skipped = gitops_flow(config_path=str(config), api_url=world.srv.url)
    assert "not a git repository" in skipped["skipped"] or "rev-parse" in skipped["skipped"], skipped


def test_healing_rules_edited_on_disk_are_put_back_as_git_has_them(world: World) -> None:
    """The config file the runs read is in git: an edit on disk is drift, reverted by rewriting the file."""
    config = world.repo / "selfheal.yaml"
    reconciler = Reconciler(load_config(config, check_estimator=False), world.srv.url)
    assert reconciler.diff() == []
    committed = config.read_text()
    config.write_text(committed.replace("max_attempts: 2", "max_attempts: 9"))
    assert [(d.target, d.field, d.live, d.desired) for d in reconciler.diff()] == [
        ("config:selfheal.yaml", "healing", {"max_attempts": 9}, {"max_attempts": 2})
    ]
    report = reconciler.tick()
    assert report.incident is not None and report.incident.state == State.RESOLVED
    assert config.read_text() == committed and reconciler.diff() == []
