"""``selfheal serve``: turn selfheal.yaml into the model server's environment and start it.

The server never imports ``flows`` (nor Prefect): this command resolves the
config, writes it into ``SELFHEAL_*`` variables and replaces itself with
``python -m serving`` (``os.execve``), so the process you started *is*
gunicorn's master and signals (SIGTERM, Ctrl-C) reach it directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli.command import Commands, Subparsers, config
from serving.settings import forbid_pickle

if TYPE_CHECKING:
    from flows.config import SelfhealConfig

_DESCRIPTION = """\
Start the model server (gunicorn + uvicorn workers) for the configured model:
POST /predict, POST /feedback, GET /health, /ready, /metrics, POST /admin/reload|rollback
(admin needs SELFHEAL_ADMIN_TOKEN). Settings come from selfheal.yaml (serving:, lake:,
tracking_uri, model_name); other SELFHEAL_* server variables pass through."""


def register(sub: Subparsers) -> None:
    """Add ``serve``."""
    srv = Commands(sub).add(
        "serve",
        cli_serve,
        "serve @champion over HTTP with fallback, breaker, hot reload and an inference log",
        _DESCRIPTION,
    )
    srv.add_argument("--workers", type=int, default=None, help="worker processes (default: serving.workers)")
    srv.add_argument("--port", type=int, default=None, help="port (default: serving.port)")
    srv.add_argument("--host", default=None, help="address to bind (default: serving.host)")
    srv.add_argument(
        "--instance",
        default=None,
        metavar="NAME",
        help="run as one of several separately started servers on the same port (SO_REUSEPORT: the kernel "
        "spreads connections over them; nothing restarts one that dies, see --replicas); NAME keeps this "
        "one's runtime folder (admin state, metrics files) apart",
    )
    srv.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="run N servers on one listening socket, each with --workers workers, under a supervisor that "
        "starts a dead one again: killing one server's master does not close the port (default: serving.replicas; "
        "1 with --instance)",
    )
    srv.add_argument(
        "--profile-startup",
        action="store_true",
        help="log each worker's start-up profile (imports, registry read, artifact load, warm-up; wall and CPU s)",
    )


def server_environment(
    cfg: SelfhealConfig, port: int, base: dict[str, str] | None = None, instance: str | None = None
) -> dict[str, str]:
    """The server's environment: ``base`` (default: this process's) plus the config's values.

    Server variables already set in ``base`` win, so a one-off override such as
    ``SELFHEAL_LOG_FLUSH_SECONDS=1 selfheal serve`` still works. ``instance`` names one of
    several servers sharing ``port``: each gets a runtime folder of its own.
    """
    env = dict(os.environ if base is None else base)
    serving = cfg.serving
    runtime = Path(cfg.home) / "serving" / (f"port-{port}-{instance}" if instance else f"port-{port}")
    values = {
        "SELFHEAL_MODEL_NAME": cfg.model_name,
        "SELFHEAL_TRACKING_URI": cfg.tracking_uri or "",
        "SELFHEAL_LAKE_ROOT": cfg.lake.root,
        "SELFHEAL_LAKE_STORAGE_OPTIONS": json.dumps(cfg.lake.storage_options),
        "SELFHEAL_POLL_SECONDS": str(serving.poll_seconds),
        "SELFHEAL_PREDICT_TIMEOUT_SECONDS": str(serving.predict_timeout_seconds),
        "SELFHEAL_BREAKER_FAIL_MAX": str(serving.breaker_fail_max),
        "SELFHEAL_BREAKER_RESET_SECONDS": str(serving.breaker_reset_seconds),
        "SELFHEAL_DEAD_LETTER_DIR": str(Path(cfg.home) / "serving" / "dead-letter"),
        "SELFHEAL_RUNTIME_DIR": str(runtime),
        # A restart serves the last champion from here when the tracking store does not answer.
        "SELFHEAL_MODEL_CACHE_DIR": str(Path(cfg.home) / "serving" / "model-cache"),
        "SELFHEAL_ARTIFACT_ROOT": cfg.artifact_root,
        "SELFHEAL_TRUSTED_TYPES": json.dumps(cfg.trainer.trusted_types),
        # What /feedback accepts as a label (the server never reads selfheal.yaml).
        "SELFHEAL_TASK": cfg.data.task,
    }
    if cfg.data.expectations.label_values is not None:
        values["SELFHEAL_LABEL_VALUES"] = json.dumps(cfg.data.expectations.label_values)
    for key, value in values.items():
        env.setdefault(key, value)
    # Nested overrides (SELFHEAL_LAKE__ROOT=...) are already folded into cfg; drop them so the
    # flat names above are the only source the server reads.
    for key in [k for k in env if k.startswith("SELFHEAL_") and "__" in k]:
        del env[key]
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    forbid_pickle(env)
    return env


def cli_serve(args: argparse.Namespace) -> int:
    """Exec the model server for the configured model (does not return on success)."""
    cfg = config(check_estimator=False)  # the server trains nothing: no scikit-learn import before the exec
    port = args.port if args.port is not None else cfg.serving.port
    workers = args.workers if args.workers is not None else cfg.serving.workers
    host = args.host or cfg.serving.host
    instance = getattr(args, "instance", None)
    env = server_environment(cfg, port, instance=instance)
    argv = [sys.executable, "-m", "serving", "--host", host, "--port", str(port), "--workers", str(workers)]
    replicas = getattr(args, "replicas", None) or (1 if instance else cfg.serving.replicas)
    if instance and replicas != 1:
        why = "--instance runs one server of several started apart; --replicas runs them under one supervisor"
        print(f"selfheal serve: {why}: use one or the other", file=sys.stderr)
        return 2
    if instance:
        argv.append("--reuse-port")
    if replicas != 1:
        argv += ["--replicas", str(replicas)]
    if cfg.serving.front != "none":
        argv += ["--front", cfg.serving.front]
    if getattr(args, "verbose", False):
        argv += ["--log-level", "debug"]
    if getattr(args, "profile_startup", False):
        argv.append("--profile-startup")
    shared = f" (instance {instance}, port shared)" if instance else ""
    shared += f" x {replicas} replicas under a supervisor" if replicas > 1 else ""
    shared += f", {cfg.serving.front} in front" if cfg.serving.front != "none" else ""
    print(f"selfheal serve: {cfg.model_name!r} on http://{host}:{port} with {workers} workers{shared}", file=sys.stderr)
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached
