"""The ``selfheal`` command line: the root parser, global options, dispatch and error translation.

Each command group lives in its own module (``flows.cli.demo``, ``flows.cli.lake``, ...)
with its arguments next to its handler; a module's ``register`` adds its parsers here.
Heavy imports (Prefect, MLflow, pandas) happen inside the handlers, so ``selfheal --help``
is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from flows.cli import batch, chaos, demo, gitops, heal, lake, local, monitor, pipeline, policy, release, serve
from flows.cli.command import Handler
from serving.settings import forbid_pickle

_DESCRIPTION = """\
selfheal: self-healing ML pipelines on Prefect.

It trains, deploys and watches a tabular model; when something breaks it
detects, diagnoses, repairs, verifies the repair and records the time to
recover (MTTR). Everything runs locally with no servers to install: Prefect on
SQLite, MLflow on SQLite, the Delta lake in a local folder (see selfheal.yaml).
"""

#: The command groups in the order ``selfheal --help`` lists them.
_GROUPS = (demo, lake, pipeline, batch, monitor, serve, heal, policy, local, release, gitops, chaos)


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
    for group in _GROUPS:
        group.register(sub)
    return parser


def _quiet_libraries(argv: Sequence[str] | None) -> None:
    """No telemetry, and library logging kept down unless -v (set before any library is imported)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    # Every command (pipeline, healer, server, sandbox, chaos) and what it starts: no unpickling (serving.modelio).
    forbid_pickle()
    # A busy 2-core machine can need more than Prefect's default 20 s to start its local server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not {"-v", "--verbose"} & set(argv if argv is not None else sys.argv[1:]):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


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


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run one command; our errors end it with one line on stderr and their exit code (1; 2 for config)."""
    from checkpoints.exceptions import SelfhealError  # checkpoints loads the lake (pandas): not on --help

    try:
        return int(handler(args) or 0)
    except SelfhealError as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"selfheal: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``selfheal`` console script."""
    _quiet_libraries(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    if args.config:
        os.environ["SELFHEAL_CONFIG"] = args.config
    return _run(args.handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
