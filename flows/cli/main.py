"""The ``selfheal`` command line.

Each command parses its arguments here and calls one function in the module
that owns the work; heavy imports (Prefect, MLflow) happen only when needed so
``selfheal --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from checkpoints.exceptions import SelfhealError

Handler = Callable[[argparse.Namespace], int | None]

_DESCRIPTION = """\
selfheal: self-healing ML pipelines on Prefect.

It trains, deploys and watches a tabular model; when something breaks it
detects, diagnoses, repairs, verifies the repair and records the time to
recover (MTTR). Everything runs locally with no servers to install: Prefect on
SQLite, MLflow on SQLite, the Delta lake in a local folder (see selfheal.yaml).
"""


#: Modules of the commands that run Prefect flows in this process.
_RUNS_FLOWS = {
    "flows.demo.script",
    "flows.cli.pipeline",
    "flows.cli.heal",
    "flows.monitor.flow",
    "flows.cli.release",
    "flows.chaos_suite.flow",
}


def _handler(target: str) -> Handler:
    """A handler that imports ``module:function`` only when the command runs.

    Commands that run flows get selfheal's in-process Prefect settings
    (``flows.prefect_runs``); the others do not pay for importing Prefect.
    """

    def run(args: argparse.Namespace) -> int | None:
        module, _, func = target.partition(":")
        handler = getattr(importlib.import_module(module), func)
        if module not in _RUNS_FLOWS:
            return handler(args)  # type: ignore[no-any-return]
        from flows.prefect_runs import in_process_runs

        with in_process_runs():
            return handler(args)  # type: ignore[no-any-return]

    return run


def _add(sub: Any, name: str, target: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=_handler(target))
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-command per job)."""
    parser = argparse.ArgumentParser(
        prog="selfheal", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help="path to selfheal.yaml (default: $SELFHEAL_CONFIG or ./selfheal.yaml; all defaults if absent)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = _add(
        sub,
        "demo",
        "flows.demo.script:cli_demo",
        "run the loop end to end on generated card-fraud data",
        "Train and serve a champion on a generated card-fraud stream, send live traffic with\n"
        "late labels, run the healer, and play a script of faults: concept drift, covariate\n"
        "drift, a corrupt batch, a bad model promoted, a worker and then the server killed,\n"
        "the tracking store unreachable. Prints each detection delay and MTTR and exits\n"
        "non-zero if any fault is not RESOLVED. Works in a scratch folder (default\n"
        "<home>/demo, wiped first) so your own lake is untouched.",
    )
    demo.add_argument("--workdir", default=None, help="scratch folder (default: <home>/demo; wiped first)")
    demo.add_argument("--batches", type=int, default=4, help="clean batches to start from (default 4)")
    demo.add_argument("--rows", type=int, default=2000, help="rows per batch (default 2000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON to PATH")

    data = sub.add_parser("data", help="generate demo data", description="Demo data tools.")
    data_sub = data.add_subparsers(title="data commands", metavar="COMMAND", required=True)
    gen = _add(
        data_sub,
        "generate",
        "flows.demo.data:cli_generate",
        "write seeded card-transaction batches into the landing zone",
        "Write a deterministic card-transaction fraud stream into the landing zone,\n"
        "one batch per file, optionally with drift or a data fault.",
    )
    gen.add_argument("--batches", type=int, default=5, help="number of batch files (default 5)")
    gen.add_argument("--rows", type=int, default=2000, help="rows per batch (default 2000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--start", type=int, default=0, help="index of the first batch (default 0)")
    gen.add_argument(
        "--drift",
        default="none",
        help="none | covariate[:MAG] | concept[:MAG] (MAG in sigmas/strength, default 1.0)",
    )
    gen.add_argument(
        "--fault",
        default="none",
        help="none | nulls | missing_column | extra_column | renamed_column | wrong_dtype | "
        "out_of_range | duplicates | truncated | garbage | empty | bom_csv | missing_label | "
        "unseen_label | inf_values | all_null_column",
    )
    gen.add_argument("--format", choices=["parquet", "csv"], default=None, help="file format (default: config)")
    gen.add_argument("--out", default=None, help="folder to write to (default: the landing zone)")
    gen.add_argument("--label-delay", type=int, default=0, help="batches before labels arrive (default 0)")

    lake = sub.add_parser("lake", help="inspect and repair the Delta lake", description="Lake tools.")
    lake_sub = lake.add_subparsers(title="lake commands", metavar="COMMAND", required=True)
    _add(lake_sub, "status", "flows.cli.lake:cli_status", "list tables, versions and the last consistent manifest")
    rec = _add(
        lake_sub,
        "recover",
        "flows.cli.lake:cli_recover",
        "set aside a corrupted newest log entry so the table reads at its last good version",
    )
    rec.add_argument("table", help="table name")
    mnt = _add(
        lake_sub,
        "maintain",
        "flows.cli.lake:cli_maintain",
        "checkpoint and vacuum tables, keeping every version a kept manifest needs",
    )
    mnt.add_argument("tables", nargs="*", help="tables (default: all)")
    mnt.add_argument("--keep-manifests", type=int, default=None, help="newest complete manifests to keep (default all)")
    _add(lake_sub, "quarantine", "flows.cli.lake:cli_quarantine", "list quarantined batches and why")

    pipe = sub.add_parser(
        "pipeline", help="run or inspect the training pipeline", description="The checkpointed training pipeline."
    )
    pipe_sub = pipe.add_subparsers(title="pipeline commands", metavar="COMMAND", required=True)
    _add(
        pipe_sub,
        "run",
        "flows.cli.pipeline:cli_run",
        "ingest new landing files, validate, build features, train, gate and promote",
        "Run the pipeline once as a Prefect flow over the files that landed since the last run.\n"
        "A refused gate or a failing stage rolls back to the last consistent manifest; a run\n"
        "killed mid-way is finished by the next one without redoing completed stages.",
    )
    _add(
        pipe_sub,
        "status",
        "flows.cli.pipeline:cli_status",
        "show the last manifests, table versions and champion/challenger/previous with metrics and lineage",
    )

    mon = _add(
        sub,
        "monitor",
        "flows.monitor.flow:cli_monitor",
        "watch predictions, labels, serving and table freshness; print the signals raised",
        "Read everything new since the last run (inference log, feedback, the server's\n"
        "/metrics, table freshness), run the drift, performance, concept-drift and anomaly\n"
        "detectors, append the metric series to the lake's metrics table and print the\n"
        "signals raised. Thresholds come from selfheal.yaml (thresholds:).",
    )
    when = mon.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run once and exit (the default)")
    when.add_argument("--interval", type=float, default=None, metavar="S", help="run every S seconds until stopped")
    mon.add_argument("--max-runs", type=int, default=None, help="with --interval: stop after this many runs")
    mon.add_argument("--serving-url", default=None, help="model server to scrape (default: serving.url or host:port)")
    mon.add_argument("--no-serving", action="store_true", help="do not scrape the model server")
    mon.add_argument("--json", action="store_true", help="print the signals as JSON")

    srv = _add(
        sub,
        "serve",
        "flows.cli.serve:cli_serve",
        "serve @champion over HTTP with fallback, breaker, hot reload and an inference log",
        "Start the model server (gunicorn + uvicorn workers) for the configured model:\n"
        "POST /predict, POST /feedback, GET /health, /ready, /metrics, POST /admin/reload|rollback\n"
        "(admin needs SELFHEAL_ADMIN_TOKEN). Settings come from selfheal.yaml (serving:, lake:,\n"
        "tracking_uri, model_name); other SELFHEAL_* server variables pass through.",
    )
    srv.add_argument("--workers", type=int, default=None, help="worker processes (default: serving.workers)")
    srv.add_argument("--port", type=int, default=None, help="port (default: serving.port)")
    srv.add_argument("--host", default=None, help="address to bind (default: serving.host)")
    heal = _add(
        sub,
        "heal",
        "flows.cli.heal:cli_heal",
        "watch and repair: monitor pass -> diagnosis -> remedies -> verified recovery",
        "Run the healer: each tick runs a monitor pass and probes the tracking store, landing\n"
        "zone, quarantine and server; diagnoses signals into causes; opens incidents and moves\n"
        "them DETECTED -> DIAGNOSED -> HEALING -> VERIFYING -> RESOLVED (or ESCALATED).\n"
        "State lives in the incidents table, so a restarted healer resumes where it stopped.\n"
        "With healing.enabled: false it detects and records but repairs nothing.",
    )
    heal_mode = heal.add_mutually_exclusive_group()
    heal_mode.add_argument("--once", action="store_true", help="one tick, then exit")
    heal_mode.add_argument(
        "--interval", type=float, default=None, help="seconds between ticks (default healing.interval_seconds)"
    )
    heal.add_argument("--no-monitor", action="store_true", help="skip the monitor pass (probes only)")
    inc = _add(
        sub,
        "incidents",
        "flows.cli.heal:cli_incidents",
        "list incidents: cause, remedies tried, outcome, MTTR; summary per cause",
    )
    inc.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="write JSON (to stdout without PATH)"
    )
    inc_sub = inc.add_subparsers(title="incident commands", metavar="COMMAND")
    ack = _add(
        inc_sub,
        "ack",
        "flows.cli.heal:cli_ack",
        "acknowledge an ESCALATED incident: you have it now",
        "Record that a person has taken an escalated incident over. It stays ESCALATED;\n"
        "its cause stops waiting out healing.escalation_hold_seconds, so the next fault of\n"
        "that cause opens a new incident (and is healed) at once.",
    )
    ack.add_argument("incident", help="the incident id (see `selfheal incidents`)")
    ack.add_argument("--by", default=None, help="who takes it (default: $USER)")
    ack.add_argument("--note", default="", help="a line for the record, e.g. what you will do")

    up = _add(
        sub,
        "up",
        "flows.local.stack:cli_up",
        "start the local stack: Prefect server, worker, model server; register the deployments",
        "Start in the background, each with a pid file and a log under <home>/run/: a Prefect\n"
        "server (SQLite under <home>/prefect), a process worker for the 'local' work pool, the\n"
        "model server (selfheal serve) and a landing watcher that turns new landing files into\n"
        "Prefect events; then `prefect deploy` the 'local' deployments of deployments/prefect.yaml\n"
        "and print the UI address and what is scheduled. `selfheal down` stops it all.",
    )
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port on 127.0.0.1 (default 4200)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for everything to start")
    _add(sub, "down", "flows.local.stack:cli_down", "stop everything `selfheal up` started (no process is left behind)")

    rel = sub.add_parser(
        "release",
        help="shadow and canary releases: start, status, promote, abort, watch",
        description="Progressive delivery: a challenger beside the champion in shadow (sees a copy of the\n"
        "traffic) or canary (answers a share of it, moving up release.steps); an analysis compares\n"
        "both on the same traffic and promotes the challenger or rolls it back (a bad_release\n"
        "incident with its MTTR). Settings: release: in selfheal.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rel_sub = rel.add_subparsers(title="release commands", metavar="COMMAND", required=True)
    rel_status = _add(
        rel_sub,
        "status",
        "flows.cli.release:cli_status",
        "show the current split, the release and its analysis (counts and the last measurement)",
    )
    rel_status.add_argument("--json", action="store_true", help="print it as JSON")
    rel_start = _add(
        rel_sub,
        "start",
        "flows.cli.release:cli_start",
        "put a registered version beside the champion as @challenger",
        "Start a release: the version becomes @challenger and every server worker routes to it\n"
        "on its next registry poll (at once when serving.url and SELFHEAL_ADMIN_TOKEN are set).\n"
        "canary: release.steps[0] of the requests are answered by it, one more step every\n"
        "release.step_seconds; shadow: release.shadow_share of them are mirrored to it, the\n"
        "champion answers. A running release of another version is superseded.",
    )
    rel_start.add_argument("--version", required=True, help="the registered version to release")
    rel_start.add_argument("--mode", choices=["canary", "shadow"], default="canary", help="default canary")
    rel_start.add_argument("--watch", action="store_true", help="then run the analysis until its verdict")
    rel_promote = _add(
        rel_sub, "promote", "flows.cli.release:cli_promote", "make the challenger champion now (ends the release)"
    )
    rel_promote.add_argument("--reason", default="promoted by hand", help="recorded with the release")
    rel_abort = _add(
        rel_sub, "abort", "flows.cli.release:cli_abort", "send all traffic back to the champion, withdraw @challenger"
    )
    rel_abort.add_argument("--reason", default="aborted by hand", help="recorded with the release")
    rel_watch = _add(
        rel_sub,
        "watch",
        "flows.cli.release:cli_watch",
        "the release controller: run the analysis flow for every release that starts",
        "Look for a running release every S seconds and run the analysis flow on it until its\n"
        "verdict: promoted, rolled back (with a bad_release incident) or held as inconclusive.",
    )
    rel_watch.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between looks (default 2)")
    rel_watch.add_argument("--once", action="store_true", help="look once (analysing a running release), then exit")
    rel_watch.add_argument("--max-seconds", type=float, default=None, help="stop analysing one release after this long")

    chaos = sub.add_parser("chaos", help="run the chaos suite", description="Fault injection with Chaos Toolkit.")
    chaos_sub = chaos.add_subparsers(title="chaos commands", metavar="COMMAND", required=True)
    chaos_run = _add(
        chaos_sub,
        "run",
        "flows.chaos_suite.flow:cli_chaos_run",
        "inject each fault into a sandboxed selfheal and hold recovery to the SLA",
        "Build a sandbox (its own config, lake, landing zone, MLflow store, model server, clients,\n"
        "pipeline schedule and healer) from selfheal.yaml, run the experiments of chaos/experiments\n"
        "one by one, and print the SLA table: fault, MTTR, SLA, availability, rows lost, verdict.\n"
        "Journals and verdicts go to the chaos_runs table, the report to <home>/reports.\n"
        "Exits 1 when an experiment missed its SLA. Network experiments need root.",
    )
    chaos_run.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all)")
    chaos_run.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="write the results as JSON (stdout: -)"
    )
    return parser


def _configure_logging(verbose: bool) -> None:
    """Our loggers at INFO (DEBUG with -v); libraries only when they warn."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in ("flows", "checkpoints", "serving", "chaos"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``selfheal`` console script."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    # A busy 2-core machine can need more than Prefect's default 20 s to start its local server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not {"-v", "--verbose"} & set(argv if argv is not None else sys.argv[1:]):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    if args.config:
        os.environ["SELFHEAL_CONFIG"] = args.config
    try:
        return int(args.handler(args) or 0)
    except SelfhealError as exc:
        print(f"selfheal: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
