"""The desired state: what git says at a revision, read without checking it out.

The pool's base job template is ``work-pools/<pool>.json`` beside the prefect file, when
git has one. Each deployment of ``gitops.prefect_file`` on the work pool ``gitops.pool`` becomes a
``DeploymentSpec``: its flow's name (from the ``@flow(name=...)`` of its entrypoint, read from
the same commit), unpaused, its schedules active, its parameters, its pool, its triggers
enabled. The templated values of prefect.yaml are filled as ``prefect deploy`` fills them
(``{{ project.stdout }}`` is the checkout; ``{{ chaos_timezone.stdout }}`` is
``$SELFHEAL_CHAOS_TIMEZONE`` or UTC); the monitor's parameters are the ones ``selfheal up``
derives from selfheal.yaml (``flows.gitops.monitor_parameters``), not prefect.yaml's defaults.

Example:
    >>> state = read_desired(Path("."), "HEAD", "deployments/prefect.yaml", "local")
    >>> state.revision, sorted(state.deployments)
    ('3f1c…', [('selfheal-healer', 'local'), …])
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from checkpoints.exceptions import SelfhealError
from flows.config import SelfhealConfig

#: The build-step output prefect.yaml templates the chaos schedule's timezone with.
_TIMEZONE_TEMPLATE = "{{ chaos_timezone.stdout }}"
MONITOR_FLOW = "selfheal-monitor"


def monitor_parameters(cfg: SelfhealConfig) -> dict[str, Any]:
    """The monitor deployment's parameters for ``cfg`` (prefect.yaml only mirrors the defaults)."""
    return {
        "lake_root": cfg.lake.root,
        "thresholds": cfg.thresholds,
        "serving_url": cfg.serving.url or f"http://{cfg.serving.host}:{cfg.serving.port}",
        "model_name": cfg.model_name,
        "tracking_uri": cfg.tracking_uri,
        "ml_task": cfg.data.task,
        "target": cfg.data.target,
        "storage_options": cfg.lake.storage_options or None,
    }


class GitOpsError(SelfhealError):
    """The desired state cannot be read (no such revision, file or flow); the message says which."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as git says it runs."""

    flow_name: str
    name: str
    entrypoint: str
    work_pool_name: str
    parameters: dict[str, Any]
    schedules: list[dict[str, Any]]
    """Each as Prefect stores it: ``{"interval": seconds}`` or ``{"cron": ..., "timezone": ...}``."""
    triggers: dict[str, bool] = field(default_factory=dict)
    """Trigger (automation) name -> enabled."""
    paused: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.flow_name, self.name)


@dataclass(frozen=True)
class DesiredState:
    revision: str
    """The commit (full hash) the state was read from."""
    deployments: dict[tuple[str, str], DeploymentSpec]
    pool_template: dict[str, Any] | None = None
    """The pool's base job template, when git has one (``work-pools/<pool>.json`` beside the prefect file)."""


def git(repo: Path, *args: str) -> str:
    """``git -C repo args``'s output; ``GitOpsError`` naming the command when it fails."""
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GitOpsError(f"git {' '.join(args)} in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def resolve(repo: Path, revision: str) -> str:
    """The full commit hash ``revision`` names in ``repo``."""
    return git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").strip()


def flow_name(source: str, function: str, where: str) -> str:
    """The name Prefect gives the flow ``function`` of ``source``: its ``@flow(name=...)``, else the function's name."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "flow":
                    for keyword in decorator.keywords:
                        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                            return str(keyword.value.value)
                    return function.replace("_", "-")
            raise GitOpsError(f"{where}: {function} is not a @flow")
    raise GitOpsError(f"{where}: no function {function}")


def _schedule(spec: Mapping[str, Any]) -> dict[str, Any]:
    if "cron" in spec:
        timezone = spec.get("timezone") or "UTC"
        if timezone == _TIMEZONE_TEMPLATE:
            timezone = os.environ.get("SELFHEAL_CHAOS_TIMEZONE") or "UTC"
        return {"cron": str(spec["cron"]), "timezone": timezone}
    if "interval" in spec:
        return {"interval": float(spec["interval"])}
    raise GitOpsError(f"a schedule selfheal does not reconcile: {dict(spec)}")


def read_desired(
    repo: Path,
    revision: str,
    prefect_file: str,
    pool: str,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
) -> DesiredState:
    """The deployments of ``pool`` in ``prefect_file`` at ``revision``.

    ``parameters``: flow name -> the parameters that flow's deployment runs with instead of
    prefect.yaml's (the monitor's, which ``selfheal up`` derives from selfheal.yaml).

    Raises:
        GitOpsError: the revision, the file or an entrypoint's flow cannot be read.
    """
    commit = resolve(repo, revision)
    try:
        spec = yaml.safe_load(git(repo, "show", f"{commit}:{prefect_file}")) or {}
    except yaml.YAMLError as exc:
        raise GitOpsError(f"{prefect_file} at {commit[:12]} is not YAML: {exc}") from exc
    deployments: dict[tuple[str, str], DeploymentSpec] = {}
    for entry in spec.get("deployments") or []:
        if (entry.get("work_pool") or {}).get("name") != pool:
            continue
        path, _, function = str(entry["entrypoint"]).partition(":")
        name = flow_name(git(repo, "show", f"{commit}:{path}"), function, f"{path} at {commit[:12]}")
        deployment = DeploymentSpec(
            flow_name=name,
            name=str(entry["name"]),
            entrypoint=str(entry["entrypoint"]),
            work_pool_name=pool,
            parameters=dict((parameters or {}).get(name, entry.get("parameters") or {})),
            schedules=[_schedule(s) for s in entry.get("schedules") or []],
            triggers={str(t["name"]): bool(t.get("enabled", True)) for t in entry.get("triggers") or []},
        )
        deployments[deployment.key] = deployment
    return DesiredState(commit, deployments, _pool_template(repo, commit, prefect_file, pool))


def _pool_template(repo: Path, commit: str, prefect_file: str, pool: str) -> dict[str, Any] | None:
    """``work-pools/<pool>.json`` beside the prefect file at ``commit``; None when git has none."""
    path = (Path(prefect_file).parent / "work-pools" / f"{pool}.json").as_posix()
    if not git(repo, "ls-tree", "--name-only", commit, "--", path).strip():
        return None
    try:
        template = json.loads(git(repo, "show", f"{commit}:{path}"))
    except ValueError as exc:
        raise GitOpsError(f"{path} at {commit[:12]} is not JSON: {exc}") from exc
    if not isinstance(template, dict):
        raise GitOpsError(f"{path} at {commit[:12]} is not a JSON object")
    return template
