"""``selfheal release start | status | promote | abort | watch``: shadow and canary releases."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flows.cli.command import Commands, Subparsers, config

if TYPE_CHECKING:
    from flows.config import SelfhealConfig

_RELEASE = """\
Progressive delivery: a challenger beside the champion in shadow (sees a copy of the
traffic) or canary (answers a share of it, moving up release.steps); an analysis compares
both on the same traffic and promotes the challenger or rolls it back (a bad_release
incident with its MTTR). Settings: release: in selfheal.yaml."""

_START = """\
Start a release: the version becomes @challenger and every server worker routes to it
on its next registry poll (at once when serving.url and SELFHEAL_ADMIN_TOKEN are set).
canary: release.steps[0] of the requests are answered by it, one more step every
release.step_seconds; shadow: release.shadow_share of them are mirrored to it, the
champion answers. A running release of another version is superseded."""

_WATCH = """\
Look for a running release every S seconds and run the analysis flow on it until its
verdict: promoted, rolled back (with a bad_release incident) or held as inconclusive.

The controller outlives an outage of the tracking store or of the lake's object store: a
look that cannot reach them is reported on stderr and the next look starts again from the
release state the registry holds. A rollback is done before its incident is written: when
the lake fails that write, the registry keeps the incident owed, and the next look (or the
next release's start) finishes it: the same incident, its first detection time. With --once or --max-looks, the exit
status is 1 when the last look failed."""


def register(sub: Subparsers) -> None:
    """Add the ``release`` group (its commands run flows in this process)."""
    release = Commands(sub, runs_flows=True).group(
        "release", "shadow and canary releases: start, status, promote, abort, watch", _RELEASE
    )
    status = release.add(
        "status", cli_status, "show the current split, the release and its analysis (counts and the last measurement)"
    )
    status.add_argument("--json", action="store_true", help="print it as JSON")
    start = release.add("start", cli_start, "put a registered version beside the champion as @challenger", _START)
    start.add_argument("--version", required=True, help="the registered version to release")
    start.add_argument("--mode", choices=["canary", "shadow"], default="canary", help="default canary")
    start.add_argument("--watch", action="store_true", help="then run the analysis until its verdict")
    promote = release.add("promote", cli_promote, "make the challenger champion now (ends the release)")
    promote.add_argument("--reason", default="promoted by hand", help="recorded with the release")
    abort = release.add("abort", cli_abort, "send all traffic back to the champion, withdraw @challenger")
    abort.add_argument("--reason", default="aborted by hand", help="recorded with the release")
    watch = release.add(
        "watch", cli_watch, "the release controller: run the analysis flow for every release that starts", _WATCH
    )
    watch.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between looks (default 2)")
    looks = watch.add_mutually_exclusive_group()
    looks.add_argument("--once", action="store_true", help="look once (analysing a running release), then exit")
    looks.add_argument("--max-looks", type=int, default=None, metavar="N", help="stop after this many looks")
    watch.add_argument("--max-seconds", type=float, default=None, help="stop analysing one release after this long")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_state(cfg: SelfhealConfig, status: dict[str, Any]) -> None:
    aliases = status["aliases"]
    print(f"model {cfg.model_name}: " + "  ".join(f"@{k}=v{v}" if v else f"@{k}=-" for k, v in aliases.items()))
    state = status["release"]
    if state is None:
        print("no release has been started (the champion answers every request)")
        return
    split = state["share"]
    if state["status"] in ("running", "inconclusive"):
        if state["mode"] == "canary":
            print(
                f"split: champion v{state['champion']} {1 - split:.0%} / challenger v{state['challenger']} {split:.0%}"
            )
        else:
            print(f"split: champion v{state['champion']} answers 100%; {split:.0%} mirrored to v{state['challenger']}")
    print(
        f"release {state['release_id']}: {state['mode']} of v{state['challenger']} over v{state['champion']}, "
        f"{state['status']} (started {_when(state['started_at'])}, step {state['step'] + 1}, "
        f"largest share {state['max_share']:.0%})"
    )
    print(f"analysis: {state['measurements']}/{cfg.release.count} measurements; {state['detail']}")
    for metric, (ok, failed, unsure) in sorted(state["counts"].items()):
        spec = cfg.release.metrics.get(metric)
        limits = f"(limits: failed {spec.failure_limit}, inconclusive {spec.inconclusive_limit})" if spec else ""
        print(f"  {metric:<20} successful {ok:>3}  failed {failed:>3}  inconclusive {unsure:>3}  {limits}")
    for m in status["last_measurement"]:
        values = ", ".join(f"{k}={m[k]:.4g}" for k in ("challenger", "champion", "result") if m.get(k) is not None)
        print(f"  last {m['metric']:<15} {m['phase']:<12} {values} n={m['samples']} {m['detail']}")


def cli_status(args: argparse.Namespace) -> int:
    """Print the current split, the release and its analysis."""
    from flows.release.controller import release_status  # imports Prefect and MLflow: not on --help

    cfg = config()
    status = release_status(cfg)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print_state(cfg, status)
    return 0


def cli_start(args: argparse.Namespace) -> int:
    """Start a shadow or canary release of a registered version, optionally analysing it to its verdict."""
    from flows.release.controller import release_analysis_flow, start_release  # Prefect, MLflow: not on --help

    state = start_release(config(), args.version, args.mode)
    print(f"release {state.release_id}: v{state.challenger} as {state.mode} challenger at {state.share:.0%}")
    if args.watch:
        final = release_analysis_flow()
        print(f"release {final.get('release_id')}: {final.get('status')}: {final.get('detail')}")
        return 0 if final.get("status") in ("promoted", "running", "inconclusive") else 1
    return 0


def cli_promote(args: argparse.Namespace) -> int:
    """``selfheal release promote``."""
    from flows.release.controller import promote_release  # imports Prefect and MLflow: not on --help

    state = promote_release(config(), args.reason)
    print(f"v{state.challenger} promoted to champion; it answers every request")
    return 0


def cli_abort(args: argparse.Namespace) -> int:
    """``selfheal release abort``."""
    from flows.release.controller import abort_release  # imports Prefect and MLflow: not on --help

    state = abort_release(config(), args.reason)
    print(f"release {state.release_id} aborted: champion v{state.champion} answers every request")
    return 0


def cli_watch(args: argparse.Namespace) -> int:
    """The release controller: analyse every release that runs, one flow run per release."""
    # The controller and the registry client import Prefect and MLflow: not on --help.
    from checkpoints.exceptions import LakeUnreachable, RegistryUnavailable
    from flows.registry import Registry
    from flows.release.controller import read_state, release_analysis_flow

    if args.max_looks is not None and args.max_looks < 1:
        print(f"selfheal release watch: --max-looks must be at least 1, got {args.max_looks}", file=sys.stderr)
        return 2
    cfg = config()
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    looks = 1 if args.once else args.max_looks
    print(f"selfheal release watch: looking for a running release every {args.interval:g} s")
    looked = 0
    while True:
        looked += 1
        failed = False
        try:
            state = read_state(registry)
            if state is not None and (state.status == "running" or state.owed_incident is not None):
                final = release_analysis_flow(max_seconds=args.max_seconds)
                print(f"release {final.get('release_id')}: {final.get('status')}: {final.get('detail')}", flush=True)
        except (RegistryUnavailable, LakeUnreachable) as exc:
            # The controller outlives a store outage: the next look starts again from the
            # release state the registry holds.
            failed = True
            print(f"selfheal release watch: {exc}; looking again in {args.interval:g} s", file=sys.stderr, flush=True)
        if looks is not None and looked >= looks:
            return 1 if failed else 0
        time.sleep(args.interval)
