"""``selfheal release start | status | promote | abort | watch``."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from flows.config import SelfhealConfig, load_config
from flows.release.controller import (
    abort_release,
    promote_release,
    read_state,
    release_analysis_flow,
    release_status,
    start_release,
)


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
    cfg = load_config()
    status = release_status(cfg)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print_state(cfg, status)
    return 0


def cli_start(args: argparse.Namespace) -> int:
    """Start a shadow or canary release of a registered version, optionally analysing it to its verdict."""
    cfg = load_config()
    state = start_release(cfg, args.version, args.mode)
    print(f"release {state.release_id}: v{state.challenger} as {state.mode} challenger at {state.share:.0%}")
    if args.watch:
        final = release_analysis_flow()
        print(f"release {final.get('release_id')}: {final.get('status')}: {final.get('detail')}")
        return 0 if final.get("status") in ("promoted", "running", "inconclusive") else 1
    return 0


def cli_promote(args: argparse.Namespace) -> int:
    cfg = load_config()
    state = promote_release(cfg, args.reason)
    print(f"v{state.challenger} promoted to champion; it answers every request")
    return 0


def cli_abort(args: argparse.Namespace) -> int:
    cfg = load_config()
    state = abort_release(cfg, args.reason)
    print(f"release {state.release_id} aborted: champion v{state.champion} answers every request")
    return 0


def cli_watch(args: argparse.Namespace) -> int:
    """The release controller: analyse every release that runs, one flow run per release."""
    cfg = load_config()
    from flows.registry import Registry

    registry = Registry(cfg.tracking_uri, cfg.model_name)
    print(f"selfheal release watch: looking for a running release every {args.interval:g} s")
    while True:
        state = read_state(registry)
        if state is not None and state.status == "running":
            final = release_analysis_flow(max_seconds=args.max_seconds)
            print(f"release {final.get('release_id')}: {final.get('status')}: {final.get('detail')}", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)
