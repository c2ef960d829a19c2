"""Compare the live Prefect server and registry with git; revert hand-made drift as an incident.

``diff`` lists every difference between the desired state (``flows.gitops.desired``) and
what is live: per deployment its paused flag, schedules (and whether each is active),
parameters, work pool and triggers (automations, enabled or not); deployments git has that
the server does not (``missing``: created by ``selfheal up`` / ``prefect deploy``, reported
only) and deployments of the pool git no longer has (``extra``: deleted when ``prune``);
the pool's base job template against ``work-pools/<pool>.json`` when git has one; the
``healing`` rules of the config file this runs with, when git has that file (an edit on
disk that the next flow run would read); and the champion alias against the version the
last gate decision promoted.

``Reconciler.tick`` is one pass. A difference whose live value is what the previously
synced revision said is a change made in git: it is applied, with no incident. Any other
is drift: a ``config_drift`` incident is opened in the incident log (detected when the
drifted object was last updated, as Prefect records it; an alias: when the pass saw it),
and with ``gitops.self_heal`` and healing enabled it is reverted under the incident's
lease (HEALING, remedy ``revert_to_git``), checked by a fresh diff (VERIFYING) and
RESOLVED, with its MTTR. With ``self_heal: false`` (or healing off) the
incident stays DIAGNOSED until live and git agree again.

Example:
    >>> reconciler = Reconciler(cfg, api_url="http://127.0.0.1:4200/api")
    >>> for drift in reconciler.diff():
    ...     print(drift.describe())
    selfheal-monitor/local: paused is True, git says False
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from checkpoints import Lake
from checkpoints.incidents import Incident, IncidentLog, State
from checkpoints.leases import claim
from flows.config import SelfhealConfig
from flows.gitops.desired import (
    MONITOR_FLOW,
    DeploymentSpec,
    DesiredState,
    GitOpsError,
    git,
    monitor_parameters,
    read_desired,
    resolve,
)
from flows.prefect_runs import deployments as prefect_deployments
from flows.prefect_runs import prefect_api
from flows.registry import CHAMPION, PROMOTED_AT_TAG, Registry

logger = logging.getLogger(__name__)

CAUSE = "config_drift"
LOCAL_POOL = "local"
REMEDY = "revert_to_git"
#: How long a champion drift must last to count (a promotion writes its tag and its aliases apart).
_SETTLE_SECONDS = 1.0
#: The deployment fields compared, as the Prefect API names them.
FIELDS = ("paused", "work_pool_name", "parameters", "schedules")


@dataclass(frozen=True)
class Drift:
    """One difference between live and git."""

    target: str
    """``flow/deployment``, or ``alias:<name>``."""
    field: str
    """A deployment field (``FIELDS``), ``trigger:<name>``, ``missing``, ``extra`` or ``champion``."""
    live: Any
    desired: Any
    changed_at: datetime | None = dataclasses.field(default=None, compare=False)
    """When the live object was last updated (Prefect's ``updated``), if known: the incident's detection time."""

    def describe(self) -> str:
        if self.field == "missing":
            return f"{self.target}: not on the server (git has it: selfheal up or prefect deploy creates it)"
        if self.field == "extra":
            return f"{self.target}: on the server, not in git"
        if self.field == "base_job_template":
            changed = sorted(_changed_keys(self.live, self.desired))
            return f"{self.target}: base job template differs from git's at {', '.join(changed) or 'its root'}"
        return f"{self.target}: {self.field} is {_show(self.live)}, git says {_show(self.desired)}"

    def to_evidence(self) -> dict[str, Any]:
        return {"target": self.target, "field": self.field, "live": self.live, "desired": self.desired}


def _healing(text: str) -> Any:
    """The ``healing`` section of a config file's text (a note when it is not YAML)."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"not YAML: {exc}"
    return loaded.get("healing") if isinstance(loaded, dict) else None


def _changed_keys(live: Any, desired: Any, path: str = "") -> set[str]:
    """The dotted paths where two JSON documents differ (a whole list counts as one value)."""
    if not isinstance(live, dict) or not isinstance(desired, dict):
        return {path} if live != desired else set()
    found: set[str] = set()
    for key in live.keys() | desired.keys():
        found |= _changed_keys(live.get(key), desired.get(key), f"{path}.{key}" if path else str(key))
    return found


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _live_schedule(row: dict[str, Any]) -> dict[str, Any]:
    schedule = row["schedule"]
    if "cron" in schedule:
        return {"cron": schedule["cron"], "timezone": schedule.get("timezone") or "UTC", "active": row["active"]}
    if "interval" in schedule:
        return {"interval": float(schedule["interval"]), "active": row["active"]}
    return {"rrule": schedule.get("rrule"), "active": row["active"]}


def _live_fields(deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        "paused": bool(deployment["paused"]),
        "work_pool_name": deployment["work_pool_name"],
        "parameters": deployment["parameters"],
        "schedules": [_live_schedule(row) for row in deployment["schedules"]],
    }


def _desired_fields(spec: DeploymentSpec) -> dict[str, Any]:
    return {
        "paused": spec.paused,
        "work_pool_name": spec.work_pool_name,
        "parameters": spec.parameters,
        "schedules": [{**schedule, "active": True} for schedule in spec.schedules],
    }


@dataclass
class LiveState:
    """The server's deployments by (flow, deployment) name, each with its ``automations``."""

    deployments: dict[tuple[str, str], dict[str, Any]]
    champion: str | None
    pool_template: dict[str, Any] | None = None
    """The pool's base job template (None: the pool does not exist)."""


def read_live(api_url: str, registry: Registry, pool: str) -> LiveState:
    """Every deployment on the server (any pool: one pointed elsewhere is still ours), the champion alias and
    ``pool``'s base job template."""
    deployments = {(row["flow_name"], row["name"]): row for row in prefect_deployments(api_url)}
    champion = registry.by_alias(CHAMPION)
    found = prefect_api("GET", f"{api_url}/work_pools/{pool}", ok=(404,))
    template = found["base_job_template"] if found else None
    return LiveState(deployments, champion.version if champion else None, template)


def _key(drift: Drift) -> tuple[str, str]:
    flow_name, _, name = drift.target.partition("/")
    return (flow_name, name)


def _updated(row: dict[str, Any] | None) -> datetime | None:
    stamp = (row or {}).get("updated")
    return datetime.fromisoformat(str(stamp)) if stamp else None


def promoted_champion(registry: Registry) -> str | None:
    """The version the last gate decision promoted: the newest ``promoted_at`` tag (promote and rollback set it)."""
    stamped = []
    for ref in registry.versions():
        try:
            stamped.append((datetime.fromisoformat(ref.tags[PROMOTED_AT_TAG]), int(ref.version)))
        except (KeyError, ValueError):  # never promoted, or a tag nobody wrote as a time
            continue
    return str(max(stamped)[1]) if stamped else None


def diff(desired: DesiredState, live: LiveState, pool: str, champion: str | None) -> list[Drift]:
    """Every difference, deployments first (in git's order), then the champion alias."""
    drifts: list[Drift] = []
    for key, spec in desired.deployments.items():
        target = "/".join(key)
        row = live.deployments.get(key)
        if row is None:
            drifts.append(Drift(target, "missing", None, spec.entrypoint))
            continue
        have, want, updated = _live_fields(row), _desired_fields(spec), _updated(row)
        drifts += [Drift(target, f, have[f], want[f], updated) for f in FIELDS if have[f] != want[f]]
        automations = {a["name"]: a for a in row["automations"]}
        for name, on in spec.triggers.items():
            automation = automations.get(name)
            enabled = bool(automation["enabled"]) if automation else None
            if enabled != on:
                drifts.append(Drift(target, f"trigger:{name}", enabled, on, _updated(automation)))
    for key, row in live.deployments.items():
        if key not in desired.deployments and row["work_pool_name"] == pool:
            drifts.append(Drift("/".join(key), "extra", row["id"], None))
    if desired.pool_template is not None and live.pool_template is not None:
        if live.pool_template != desired.pool_template:
            drifts.append(Drift(f"pool:{pool}", "base_job_template", live.pool_template, desired.pool_template))
    if champion is not None and live.champion != champion:
        drifts.append(Drift(f"alias:{CHAMPION}", "champion", live.champion, champion))
    return drifts


def apply(drift: Drift, api_url: str, live: LiveState, registry: Registry, prune: bool) -> bool:
    """Make one live value what git says; False when it is only reported (``missing``, ``extra`` without prune)."""
    if drift.field == "champion":
        registry.set_alias(CHAMPION, str(drift.desired))
        return True
    if drift.field == "missing" or (drift.field == "extra" and not prune):
        return False
    if drift.field == "base_job_template":
        pool = drift.target.removeprefix("pool:")
        prefect_api("PATCH", f"{api_url}/work_pools/{pool}", {"base_job_template": drift.desired})
        return True
    row = live.deployments[_key(drift)]
    url = f"{api_url}/deployments/{row['id']}"
    if drift.field == "extra":
        prefect_api("DELETE", url, ok=(404,))
    elif drift.field.startswith("trigger:"):
        automation = next(a for a in row["automations"] if a["name"] == drift.field.removeprefix("trigger:"))
        prefect_api("PATCH", f"{api_url}/automations/{automation['id']}", {"enabled": drift.desired})
    elif drift.field == "schedules":
        _apply_schedules(url, row["schedules"], drift.desired)
    else:
        prefect_api("PATCH", url, {drift.field: drift.desired})
    return True


def _apply_schedules(url: str, rows: list[dict[str, Any]], desired: list[dict[str, Any]]) -> None:
    """Only the active flags when the schedules themselves agree; else git's schedules replace the live ones."""
    same = [{k: v for k, v in _live_schedule(r).items() if k != "active"} for r in rows] == [
        {k: v for k, v in s.items() if k != "active"} for s in desired
    ]
    if same:
        for row, want in zip(rows, desired, strict=True):
            if row["active"] != want["active"]:
                prefect_api("PATCH", f"{url}/schedules/{row['id']}", {"active": want["active"]})
        return
    for row in rows:
        prefect_api("DELETE", f"{url}/schedules/{row['id']}", ok=(404,))
    body = [{"schedule": {k: v for k, v in s.items() if k != "active"}, "active": s["active"]} for s in desired]
    if body:
        prefect_api("POST", f"{url}/schedules", body)


@dataclass
class TickReport:
    """What one pass found and did."""

    revision: str
    drifts: list[Drift] = field(default_factory=list)
    applied_from_git: list[Drift] = field(default_factory=list)
    reverted: list[Drift] = field(default_factory=list)
    incident: Incident | None = None


class Reconciler:
    """Keeps one Prefect server's deployments (on ``gitops.pool``) and the champion alias as git says."""

    def __init__(self, cfg: SelfhealConfig, api_url: str, *, base: Path | None = None) -> None:
        """``base``: where relative ``gitops.repo`` and ``home`` paths start (the config file's folder)."""
        self.cfg = cfg
        self.api_url = api_url.rstrip("/")
        self.base = base or (Path(cfg.source_path).parent if cfg.source_path else Path.cwd())
        self.repo = (self.base / cfg.gitops.repo).resolve()
        self.registry = Registry(cfg.tracking_uri, cfg.model_name)
        self.lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
        self.log = IncidentLog(self.lake)
        self.state_file = (self.base / cfg.home / "gitops.json").resolve()
        self._desired: dict[str, DesiredState] = {}

    def desired(self, revision: str | None = None) -> DesiredState:
        """The desired state at ``revision`` (default ``gitops.revision``), read once per commit."""
        gitops = self.cfg.gitops
        commit = resolve(self.repo, revision or gitops.revision)
        if commit not in self._desired:
            if len(self._desired) >= 2:  # the synced commit and the current one are all a pass reads
                self._desired.pop(next(iter(self._desired)))
            self._desired[commit] = read_desired(
                self.repo,
                commit,
                gitops.prefect_file,
                gitops.pool,
                # `selfheal up` sets the local monitor's parameters from selfheal.yaml; elsewhere prefect.yaml's stand.
                {MONITOR_FLOW: monitor_parameters(self.cfg)} if gitops.pool == LOCAL_POOL else {},
            )
        return self._desired[commit]

    def diff(self) -> list[Drift]:
        return self._drifts(self.desired(), read_live(self.api_url, self.registry, self.cfg.gitops.pool))

    def _drifts(self, desired: DesiredState, live: LiveState) -> list[Drift]:
        """``diff`` of the server and the registry, then the healing rules of the config this runs with."""
        drifts = diff(desired, live, self.cfg.gitops.pool, promoted_champion(self.registry))
        return drifts + self._config_drifts(desired.revision)

    def _config_file(self, revision: str) -> str | None:
        """The config file this runs with, as a path in the repo, when git has it at ``revision``."""
        if not self.cfg.source_path:
            return None
        try:
            path = Path(self.cfg.source_path).resolve().relative_to(self.repo).as_posix()
        except ValueError:  # outside the checkout: not git's to keep
            return None
        return path if git(self.repo, "ls-tree", "--name-only", revision, "--", path).strip() else None

    def _config_drifts(self, revision: str) -> list[Drift]:
        """The config's ``healing`` rules when the file on disk differs from the revision's (an edit by hand)."""
        path = self._config_file(revision)
        if path is None:
            return []
        desired = _healing(git(self.repo, "show", f"{revision}:{path}"))
        try:
            live = _healing((self.repo / path).read_text())
        except OSError as exc:
            live = f"unreadable: {exc}"
        return [] if live == desired else [Drift(f"config:{path}", "healing", live, desired)]

    def _apply(self, drift: Drift, live: LiveState, revision: str) -> bool:
        if drift.field != "healing":
            return apply(drift, self.api_url, live, self.registry, self.cfg.gitops.prune)
        path = drift.target.removeprefix("config:")
        file = self.repo / path
        tmp = file.with_name(f".{file.name}.gitops")
        tmp.write_text(git(self.repo, "show", f"{revision}:{path}"))  # the whole file, as git has it
        tmp.replace(file)
        return True

    def synced_revision(self) -> str | None:
        """The revision live last agreed with (``<home>/gitops.json``)."""
        try:
            return str(json.loads(self.state_file.read_text())["revision"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _mark_synced(self, revision: str) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"revision": revision, "at": datetime.now(UTC).isoformat()}))
        tmp.replace(self.state_file)

    def _from_git(self, drifts: list[Drift], desired: DesiredState) -> list[Drift]:
        """The drifts whose live value is what the previously synced revision said: git moved, not live."""
        before = self.synced_revision()
        if before is None or before == desired.revision:
            return []
        try:
            old = self.desired(before)
        except GitOpsError as exc:  # the old commit is gone (a force-push): everything counts as drift
            logger.warning("gitops: cannot read the previously synced revision %s: %s", before[:12], exc)
            return []
        moved = []
        for drift in drifts:
            spec = old.deployments.get(_key(drift))
            if drift.field == "missing" or (drift.field == "extra" and spec is not None):
                moved.append(drift)  # added or removed in git
            elif spec is not None and drift.field in FIELDS and _desired_fields(spec)[drift.field] == drift.live:
                moved.append(drift)
            elif drift.field == "base_job_template" and old.pool_template == drift.live:
                moved.append(drift)
            elif drift.field == "healing" and self._config_drifts(before) == []:  # the file is the old commit's
                moved.append(drift)
            elif spec is not None and drift.field.startswith("trigger:"):
                if spec.triggers.get(drift.field.removeprefix("trigger:")) == drift.live:
                    moved.append(drift)
        return moved

    def deploy(self, specs: list[DeploymentSpec], desired: DesiredState) -> None:
        """``prefect deploy`` of ``specs`` from the checkout, whose prefect file must be the revision's; the pool
        created first if it does not exist (with git's base job template, else the process worker's default).

        Raises:
            GitOpsError: the checkout's file differs from the revision's, or ``prefect deploy`` failed.
        """
        from prefect.workers.process import ProcessWorker  # why local: only a pass that creates imports it

        gitops, revision = self.cfg.gitops, desired.revision
        file = self.repo / gitops.prefect_file
        if not file.exists() or file.read_text() != git(self.repo, "show", f"{revision}:{gitops.prefect_file}"):
            raise GitOpsError(
                f"{file} is not {gitops.prefect_file} of {revision[:12]}: check that revision out to deploy"
            )
        template = desired.pool_template or ProcessWorker.get_default_base_job_template()
        body = {"name": gitops.pool, "type": "process", "base_job_template": template}
        prefect_api("POST", f"{self.api_url}/work_pools/", body, ok=(409,))  # 409: it exists
        names = [
            arg for s in specs for arg in ("--name", f"{s.entrypoint.rpartition(':')[2].replace('_', '-')}/{s.name}")
        ]
        argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(file), *names]
        env = {**os.environ, "PREFECT_API_URL": self.api_url}
        done = subprocess.run(argv, cwd=self.repo, env=env, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise GitOpsError(f"prefect deploy failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")

    def tick(self, *, dry_run: bool = False, deploy_missing: bool = False) -> TickReport:
        """One pass (see the module docstring).

        ``dry_run``: only diff, change nothing, record nothing. ``deploy_missing``: create the
        deployments git has and the server lacks (``prefect deploy``), then set what that
        leaves different (the monitor's parameters), as changes from git.
        """
        desired = self.desired()
        live = read_live(self.api_url, self.registry, self.cfg.gitops.pool)
        drifts = self._drifts(desired, live)
        if any(d.field == "champion" for d in drifts):
            drifts = self._champion_settled(drifts)
        report = TickReport(desired.revision, drifts)
        if dry_run:
            return report
        created: list[Drift] = []
        if deploy_missing and (missing := [d for d in drifts if d.field == "missing"]):
            self.deploy([desired.deployments[_key(d)] for d in missing], desired)
            report.applied_from_git += missing
            live = read_live(self.api_url, self.registry, self.cfg.gitops.pool)
            drifts = self._drifts(desired, live)
            created = [d for d in drifts if d.target in {m.target for m in missing}]
        from_git = created + [d for d in self._from_git(drifts, desired) if d not in created]
        for drift in from_git:
            if self._apply(drift, live, desired.revision):
                report.applied_from_git.append(drift)
                logger.info("gitops: applied from git %s: %s", desired.revision[:12], drift.describe())
        hand = [d for d in drifts if d not in from_git and self._revertible(d)]
        report.incident, report.reverted = self._handle(hand, live, desired.revision)
        if not hand:
            self._mark_synced(desired.revision)
        return report

    def _champion_settled(self, drifts: list[Drift]) -> list[Drift]:
        """``drifts`` without a champion drift that is gone a moment later: a promotion or rollback in
        progress (its tag and its aliases are separate writes) is not a hand-moved alias."""
        time.sleep(_SETTLE_SECONDS)
        champion, wanted = self.registry.by_alias(CHAMPION), promoted_champion(self.registry)
        if wanted is None or (champion is not None and champion.version == wanted):
            return [d for d in drifts if d.field != "champion"]
        return [
            replace(d, live=champion.version if champion else None, desired=wanted) if d.field == "champion" else d
            for d in drifts
        ]

    def _revertible(self, drift: Drift) -> bool:
        """Drift acted on: not a deployment only ``prefect deploy`` creates, nor an extra one without prune."""
        return drift.field != "missing" and (drift.field != "extra" or self.cfg.gitops.prune)

    def _handle(self, hand: list[Drift], live: LiveState, revision: str) -> tuple[Incident | None, list[Drift]]:
        incident = self.log.open_for(CAUSE)
        if not hand:
            if incident is not None:  # reverted by a pass that did not live to verify, or put back by hand
                incident = self.log.advance(incident, State.RESOLVED, detail="live agrees with git") or incident
            return incident, []
        if incident is None:
            evidence = {"drift": [d.to_evidence() for d in hand]}
            changed = [d.changed_at for d in hand if d.changed_at is not None]
            incident = self.log.open(CAUSE, evidence, detected_at=min(changed) if changed else None)
            described = "; ".join(d.describe() for d in hand)
            logger.warning("gitops: incident %s: config drift: %s", incident.id, described)
            incident = self.log.advance(incident, State.DIAGNOSED, evidence=evidence, detail=described) or incident
        reverting = self.cfg.gitops.self_heal and self.cfg.healing.enabled
        if not reverting or not claim(self.lake, incident.id, datetime.now(UTC)):
            return incident, []
        healing = self.log.advance(incident, State.HEALING, remedy=REMEDY, attempt=1)
        if healing is None:  # another reconciler took this step
            return incident, []
        reverted = [d for d in hand if self._apply(d, live, revision)]
        incident = self.log.advance(healing, State.VERIFYING, remedy=REMEDY, attempt=1) or healing
        left = [d for d in self.diff() if self._revertible(d)]
        if left:
            detail = "still drifted: " + "; ".join(d.describe() for d in left)
            return self.log.advance(incident, State.DIAGNOSED, detail=detail) or incident, reverted
        resolved = self.log.advance(incident, State.RESOLVED, remedy=REMEDY, detail=f"reverted {len(reverted)}")
        return resolved or incident, reverted
