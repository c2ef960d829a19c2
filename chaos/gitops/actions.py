"""Definition faults: what a person changes by hand on a live system, outside git and the gate.

``drift_definitions`` pauses the monitor's deployment, points the pipeline's deployment
at another config file and moves ``@champion`` to a version no gate decision promoted
(a copy of the champion registered beside it, same artifacts, without the
``promoted_at`` tag a promotion sets). What it changed is kept in the fault ledger;
``restore_definitions`` puts it back (the rollback) and removes the copy.
``deploy_from_git`` gives the sandbox its deployments first: ``selfheal gitops sync
--deploy-missing``, as a first sync from git would.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
from pathlib import Path
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.registry._store import registry as open_registry
from chaos.serving._server import run_command, start_detached
from serving import processes
from serving.registry import CHAMPION, CHAOS_TAG, PROMOTED_AT_TAG

__all__ = ["deploy_from_git", "drift_definitions", "restore_definitions", "start_watcher", "stop_watcher"]

logger = logging.getLogger(__name__)

MONITOR_FLOW = "selfheal-monitor"
PIPELINE_FLOW = "selfheal-pipeline"
HAND_MOVED = "hand-moved-alias"
WATCHER_PID = "gitops.pid"
#: What the pipeline deployment is pointed at by hand.
ELSEWHERE = {"config_path": "/tmp/selfheal-edited-by-hand.yaml"}


def _api(method: str, url: str, body: Any = None) -> Any:
    response = httpx.request(method, url, json=body, timeout=15.0)
    response.raise_for_status()
    return response.json() if response.content else None


def _deployment(prefect_api_url: str, flow_name: str, pool: str = "local") -> dict[str, Any]:
    """The one deployment of ``flow_name`` on ``pool``; ``ActivityFailed`` when there is none."""
    flows = {f["id"]: f["name"] for f in _api("POST", f"{prefect_api_url}/flows/filter", {})}
    body = {"work_pools": {"name": {"any_": [pool]}}}
    found = [d for d in _api("POST", f"{prefect_api_url}/deployments/filter", body) if flows[d["flow_id"]] == flow_name]
    if len(found) != 1:
        raise ActivityFailed(f"{len(found)} deployments of {flow_name} on the {pool} pool at {prefect_api_url}")
    return dict(found[0])


def deploy_from_git(prefect_api_url: str, config_path: str, timeout: float = 300.0) -> str:
    """``selfheal gitops sync --deploy-missing`` against the sandbox's Prefect server; its output."""
    argv = ["selfheal", "-c", config_path, "gitops", "sync", "--deploy-missing", "--api-url", prefect_api_url]
    return run_command(argv, timeout)


def start_watcher(sandbox: str, config_path: str, prefect_api_url: str) -> dict[str, Any]:
    """Start ``selfheal gitops watch`` beside the sandbox (pid in ``run/gitops.pid``, log in ``logs/gitops.log``).

    It reverts drift only with healing on (the sandbox's config says which); the sandbox stops it if
    ``stop_watcher`` did not.
    """
    root = Path(sandbox)
    argv = ["selfheal", "-c", config_path, "gitops", "watch", "--api-url", prefect_api_url]
    proc = start_detached(argv, str(root), str(root / "logs" / "gitops.log"))
    (root / "run").mkdir(parents=True, exist_ok=True)
    (root / "run" / WATCHER_PID).write_text(f"{proc.pid}\n")
    return {"pid": proc.pid}


def stop_watcher(sandbox: str) -> dict[str, Any]:
    """Stop the watcher ``start_watcher`` started (only a process running ``gitops watch`` is signalled)."""
    pid_file = Path(sandbox) / "run" / WATCHER_PID
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return {"stopped": False, "why": f"no {pid_file}"}
    ours = "gitops watch" in " ".join(processes.argv(pid))
    if ours:
        processes.stop(processes.process_tree(pid), grace=5.0)
    pid_file.unlink(missing_ok=True)
    return {"stopped": ours, "pid": pid}


def drift_definitions(
    prefect_api_url: str, tracking_uri: str, model_name: str, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Pause the monitor, repoint the pipeline, move ``@champion`` by hand; record what they were."""
    registry = open_registry(tracking_uri, model_name)
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        raise ActivityFailed(f"model {model_name!r} has no @{CHAMPION}: no alias to move")
    monitor, pipeline = _deployment(prefect_api_url, MONITOR_FLOW), _deployment(prefect_api_url, PIPELINE_FLOW)
    source = registry.source(champion)
    created = registry.call(
        "register a copy of the champion",
        lambda c: c.create_model_version(model_name, source=source, tags={CHAOS_TAG: HAND_MOVED}),
        wait=True,
    )
    copy = str(created.version)
    for key, value in champion.tags.items():
        if key not in (PROMOTED_AT_TAG, CHAOS_TAG):
            registry.set_tag(copy, key, value)
    detail = {
        "monitor": {"id": monitor["id"], "paused": monitor["paused"]},
        "pipeline": {"id": pipeline["id"], "parameters": pipeline["parameters"]},
        "champion": champion.version,
        "copy": copy,
        "model": model_name,
    }
    at = ledger.record(configuration, "fault", fault="drift_definitions", detail=detail)
    _api("PATCH", f"{prefect_api_url}/deployments/{monitor['id']}", {"paused": True})
    _api("PATCH", f"{prefect_api_url}/deployments/{pipeline['id']}", {"parameters": ELSEWHERE})
    registry.set_alias(CHAMPION, copy)
    logger.info("by hand: monitor paused, pipeline repointed, @champion v%s -> v%s", champion.version, copy)
    return {**detail, "at": at}


def restore_definitions(
    prefect_api_url: str, tracking_uri: str, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Put back what ``drift_definitions`` changed (whatever reverted it already) and delete the copy."""
    detail = ledger.last_fault(configuration, "drift_definitions")
    if detail is None:
        return {"restored": False, "why": "no drift_definitions fault in this run"}
    monitor, pipeline = detail["monitor"], detail["pipeline"]
    _api("PATCH", f"{prefect_api_url}/deployments/{monitor['id']}", {"paused": monitor["paused"]})
    _api("PATCH", f"{prefect_api_url}/deployments/{pipeline['id']}", {"parameters": pipeline["parameters"]})
    registry = open_registry(tracking_uri, detail["model"])
    current = registry.by_alias(CHAMPION)
    if current is not None and current.version == detail["copy"]:
        registry.set_alias(CHAMPION, detail["champion"])
    registry.delete_version(detail["copy"])
    ledger.record(configuration, "restore", fault="drift_definitions", detail={"champion": detail["champion"]})
    return {"restored": True, **detail}
