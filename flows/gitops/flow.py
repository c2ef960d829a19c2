"""The reconciler as a Prefect flow: one pass per run (the ``selfheal-gitops`` deployment, every 3 minutes).

``selfheal gitops watch`` runs its passes in-process (every ``gitops.interval_seconds``); the
deployment runs this flow on a schedule, as Argo CD's default sync interval does. A run
whose ``gitops.repo`` is not a git checkout (an image built without ``.git``) completes
with a warning: there is no desired state to keep.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger

from flows.config import load_config
from flows.gitops.desired import GitOpsError, resolve
from flows.gitops.reconcile import Reconciler


@flow(name="selfheal-gitops")
def gitops_flow(config_path: str | None = None, api_url: str | None = None) -> dict[str, Any]:
    """One pass: apply git's changes, revert drift as a config_drift incident. Returns what it did."""
    from prefect.settings import PREFECT_API_URL

    log = get_run_logger()
    cfg = load_config(config_path)
    api = api_url or PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
    if not api:
        raise GitOpsError("no Prefect API to reconcile: set PREFECT_API_URL or pass api_url")
    reconciler = Reconciler(cfg, str(api))
    try:
        resolve(reconciler.repo, cfg.gitops.revision)
    except GitOpsError as exc:
        log.warning("gitops: nothing to reconcile (%s); set gitops.repo to a git checkout", exc)
        return {"skipped": str(exc)}
    report = reconciler.tick()
    for drift in report.applied_from_git:
        log.info("applied from git %s: %s", report.revision[:12], drift.describe())
    for drift in report.reverted:
        log.warning("reverted: %s", drift.describe())
    incident = report.incident
    return {
        "revision": report.revision,
        "drifts": [d.describe() for d in report.drifts],
        "applied_from_git": [d.describe() for d in report.applied_from_git],
        "reverted": [d.describe() for d in report.reverted],
        "incident": None if incident is None else {"id": incident.id, "state": incident.state.value},
    }
