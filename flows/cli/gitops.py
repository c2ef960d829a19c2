"""``selfheal gitops diff|sync|watch``: the Prefect deployments and the champion alias, kept as git says."""

from __future__ import annotations

import argparse
import os
import time

import httpx

from flows.cli.command import Commands, Subparsers, config

_GITOPS = """\
The desired state is read from git at gitops.revision (default HEAD of gitops.repo,
default the config's folder): the deployments of gitops.prefect_file on the work pool
gitops.pool (unpaused, schedules active, their parameters, pool and triggers; the
monitor's parameters derived from selfheal.yaml as `selfheal up` sets them), and the
champion alias on the version the last gate decision promoted. Drift made by hand is
a config_drift incident in the incident log; with gitops.self_heal (and healing on) it
is reverted and the incident resolved with its MTTR. A change committed to git is
applied, not reverted. The Prefect API is --api-url, else $PREFECT_API_URL (`selfheal
up` prints it)."""


def register(sub: Subparsers) -> None:
    """Add the ``gitops`` group."""
    gitops = Commands(sub).group("gitops", "keep deployments and the champion alias as git says", _GITOPS)
    diff = gitops.add("diff", cli_diff, "list where live differs from git (changes nothing; exit 1 when it does)")
    sync = gitops.add("sync", cli_sync, "one pass: apply git's changes, revert drift as an incident")
    watch = gitops.add("watch", cli_watch, "a pass every gitops.interval_seconds (Argo CD's selfHeal, for Prefect)")
    watch.add_argument("--interval", type=float, default=None, metavar="S", help="default gitops.interval_seconds")
    sync.add_argument(
        "--deploy-missing",
        action="store_true",
        help="create the deployments git has and the server lacks (prefect deploy from the checkout)",
    )
    for parser in (diff, sync, watch):
        parser.add_argument("--api-url", default=None, help="the Prefect API (default $PREFECT_API_URL)")


def _reconciler(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from checkpoints.exceptions import SelfhealError  # checkpoints loads the lake (pandas): not on --help
    from flows.gitops.reconcile import Reconciler

    api_url = args.api_url or os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise SelfhealError("no Prefect API: pass --api-url or set PREFECT_API_URL (`selfheal up` prints it)")
    return Reconciler(config(check_estimator=False), api_url)


def cli_diff(args: argparse.Namespace) -> int:
    """``selfheal gitops diff``: exit 0 in sync, 1 drifted."""
    report = _reconciler(args).tick(dry_run=True)
    if not report.drifts:
        print(f"in sync with {report.revision[:12]}")
        return 0
    print(f"{len(report.drifts)} difference(s) from {report.revision[:12]}:")
    for drift in report.drifts:
        print(f"  {drift.describe()}")
    return 1


def _print_pass(report) -> None:  # type: ignore[no-untyped-def]
    for drift in report.applied_from_git:
        print(f"  applied from git: {drift.describe()}")
    for drift in report.reverted:
        print(f"  reverted: {drift.describe()}")
    incident = report.incident
    if incident is not None:
        mttr = f", MTTR {incident.mttr_seconds:.1f} s" if incident.mttr_seconds is not None else ""
        print(f"  incident {incident.id} {incident.state.value}{mttr}: {incident.last.detail[:120]}")


def cli_sync(args: argparse.Namespace) -> int:
    """``selfheal gitops sync``: exit 0 when live agrees with git afterwards, 1 when drift is left."""
    reconciler = _reconciler(args)
    report = reconciler.tick(deploy_missing=args.deploy_missing)
    print(f"synced with {report.revision[:12]}: {len(report.drifts)} difference(s) found")
    _print_pass(report)
    return 0 if report.incident is None or report.incident.state.closed else 1


def cli_watch(args: argparse.Namespace) -> int:
    """``selfheal gitops watch``: a pass every interval, until interrupted."""
    reconciler = _reconciler(args)
    interval = args.interval or reconciler.cfg.gitops.interval_seconds
    heal = reconciler.cfg.gitops.self_heal and reconciler.cfg.healing.enabled
    print(f"selfheal gitops watch: every {interval:g} s; drift is {'reverted' if heal else 'reported only'}")
    from checkpoints.exceptions import SelfhealError  # checkpoints loads the lake (pandas): not on --help

    shown = None  # the last pass printed: a drift only reported is printed once, not at every pass
    while True:
        started = time.monotonic()
        try:
            report = reconciler.tick()
        except (SelfhealError, OSError, httpx.HTTPError) as exc:  # a store or server away: report, look again
            print(f"selfheal gitops watch: pass failed: {type(exc).__name__}: {exc}", flush=True)
        else:
            seen = (report.incident and (report.incident.id, report.incident.state), report.drifts)
            if report.drifts and seen != shown:
                _print_pass(report)
            shown = seen
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
