"""Run the model server: gunicorn's master with uvicorn workers.

gunicorn supervises the workers: a worker that dies (even ``kill -9``) is
replaced while the others keep serving from the shared listening socket, and so
is one that hangs (its heartbeat stops: ``--timeout``, 10 s).
The app is imported once in the master (``preload_app``), so a replacement
worker is a fork that only has to load its model, not import MLflow again.

SIGTERM to the master is a graceful stop: each worker finishes its requests,
then writes its queued inference-log rows before it exits.

Nothing replaces a dead master: with ``--replicas N`` (N >= 2) the process started is a
supervisor (``serving.supervisor``) running N masters on the same port, each started
again when it exits, so killing one master does not close the port.

Usage::

    SELFHEAL_TRACKING_URI=sqlite:///mlflow.db SELFHEAL_MODEL_NAME=fraud-detector \\
    SELFHEAL_LAKE_ROOT=/data/lake SELFHEAL_ADMIN_TOKEN=... \\
    python -m serving --workers 2 --port 8765
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from pydantic import ValidationError

from serving import startup
from serving.front import FRONTS
from serving.settings import ServerSettings, forbid_pickle

logger = logging.getLogger(__name__)


def _post_fork(server: Any, worker: Any) -> None:
    # A worker outlives a SIGKILLed master otherwise: it keeps answering on the port (under
    # --reuse-port from a socket of its own, under --replicas from the shared one) with nothing to replace
    # or stop it.
    from serving import processes

    processes.die_with_parent(worker.ppid)
    if processes.name(worker.ppid) == processes.REPLICA_MASTER:  # forked with its master's name
        processes.set_name(processes.REPLICA_WORKER)


def _child_exit(server: Any, worker: Any) -> None:
    # prometheus_client picks its multiprocess mode at import: only after prepare_runtime() set it.
    from serving.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


class ModelServerApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code (no gunicorn.conf.py to find)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    @staticmethod
    def import_app() -> Callable[[], Any]:
        """Import the app and the heavy modules its models need; return its factory."""
        # After main() set OMP_NUM_THREADS and PROMETHEUS_MULTIPROC_DIR, which numpy and prometheus_client
        # read at import; and `python -m serving --help` stays instant.
        # Imports only allocate (nothing to collect): without the collector passes they trigger, ~10% faster.
        collecting = gc.isenabled()
        gc.disable()
        try:
            # skops first: at import it looks up the module of each of ~260 scipy functions
            # across all of sys.modules, which the app's imports would double.
            if _starts_compiled():
                logger.info("not preloading scikit-learn: the cached versions start from their compiled forms")
            else:
                with startup.phase("import scikit-learn + skops (preload)"):
                    _import_heavy_modules()
            with startup.phase("import the app (FastAPI, pandas, pyarrow)"):
                from serving.app import create_app
        finally:
            if collecting:
                gc.enable()
        return create_app

    def load(self) -> Any:
        app = self.import_app()()
        # MLflow, scikit-learn and pandas leave millions of long-lived objects: a full collection
        # of them paused a worker for 0.3-1.3 s (the p99). Frozen before the fork, they are never
        # scanned again, and the workers keep sharing their pages (copy-on-write).
        gc.collect()
        gc.freeze()
        startup.mark_fork()
        return app


#: Imported once in the master so a forked (or replacement) worker does not pay for them
#: (skops first, without its walk of all of scikit-learn: ``serving.modelio.import_skops_lean``).
#: Not MLflow: the server reads the registry and loads models without it (serving.registry_reads).
_HEAVY_MODULES = (
    "sklearn.pipeline",
    "sklearn.ensemble",
    "threadpoolctl",
)


def _starts_compiled() -> bool:
    """Whether each version the model cache last saw an alias name has its compiled form kept.

    Then the workers start from those (``serving.model.LoadedModel.load``) without scikit-learn,
    and each imports it after it is ready, in the background: preloading it here would cost
    every start (and restart) ~1.2 s before the first worker exists.
    """
    try:
        settings = ServerSettings()
    except ValidationError:
        return False
    if not settings.model_cache_dir:
        return False
    from serving.model_cache import ModelCache

    cache = ModelCache(settings.model_cache_dir, settings.model_name)
    refs = cache.remembered_refs().values()
    return bool(refs) and all(cache.get_compiled(ref, None) is not None for ref in refs)


def _import_heavy_modules() -> None:
    from serving.modelio import import_skops_lean

    import_skops_lean()
    for name in _HEAVY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # optional store back-ends; the worker imports what it needs
            logger.debug("not preloading %s: %s", name, exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="selfheal model server (gunicorn + uvicorn workers); settings come from SELFHEAL_* variables",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="gunicorn masters sharing the port (SO_REUSEPORT), each with --workers workers, under a supervisor "
        "that starts a dead one again (default 1: no supervisor)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other servers started the same way (SO_REUSEPORT: the kernel spreads new "
        "connections over them); give each its own SELFHEAL_RUNTIME_DIR",
    )
    parser.add_argument(
        "--front",
        choices=FRONTS,
        default="none",
        help="with --replicas: a proxy on the port that sends a request again when its worker dies before "
        "answering (haproxy: the Debian package; default none)",
    )
    parser.add_argument(
        "--shared-runtime",
        action="store_true",
        help="SELFHEAL_RUNTIME_DIR was prepared by a supervisor and is shared with the other replicas (one admin "
        "state, one set of metrics files): use it as it is instead of clearing it (set by --replicas)",
    )
    # A worker whose event loop is wedged (or stopped) still counts as alive: only this heartbeat
    # notices it, and meanwhile every request on a connection it holds hangs. 60 s (gunicorn's
    # usual) outlasts the serving MTTR SLA; uvicorn's loop beats every timeout/2 even under load
    # (predictions and model loads run in threads), and a booting worker is not timed until its
    # first beat, so a slow model load is not cut short.
    parser.add_argument(
        "--timeout", type=int, default=10, help="seconds without a heartbeat before a worker is replaced (default 10)"
    )
    parser.add_argument("--graceful-timeout", type=int, default=30, help="seconds a stopping worker gets to flush")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--profile-startup",
        action="store_true",
        help="log a start-up profile once each worker has its models: seconds (wall and CPU) spent on "
        "imports, registry reads, artifact fetch, model load and the warm-up prediction",
    )
    return parser


def prepare_runtime(settings: ServerSettings, *, shared: bool = False) -> str:
    """Create the folder the workers share and point Prometheus' multiprocess mode at it.

    An earlier server's admin state (a rollback pin) is cleared: a pin lasts as
    long as the server that received it (under ``--replicas``, the supervisor:
    its replicas share the folder, ``shared``, and a restarted one keeps the
    pin and the others' metrics files). Make a rollback durable by moving the
    registry aliases.
    """
    runtime = settings.runtime_dir or tempfile.mkdtemp(prefix="selfheal-serve-")
    prometheus = Path(runtime) / "prometheus"
    if not shared:
        shutil.rmtree(prometheus, ignore_errors=True)
        (Path(runtime) / "control.json").unlink(missing_ok=True)
    prometheus.mkdir(parents=True, exist_ok=True)
    os.environ["SELFHEAL_RUNTIME_DIR"] = runtime
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prometheus)
    return runtime


def _limit_model_threads(settings: ServerSettings) -> None:
    """Before numpy/sklearn load: one OpenMP/BLAS thread per call, the workers share the cores."""
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.model_threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(settings.model_threads))


def _supervise(args: argparse.Namespace, settings: ServerSettings) -> int:
    """Run ``args.replicas`` servers under ``serving.supervisor`` until stopped (see the comments for their sockets)."""
    from serving.front import front_command
    from serving.processes import SUPERVISOR, set_name

    set_name(SUPERVISOR)  # first: its forked masters share its command line, only names tell them apart
    # The supervisor binds the port and every replica's workers accept on that one socket, so
    # a connection waits in its queue for any live worker: a killed, stopped or booting one
    # takes none (per-worker SO_REUSEPORT sockets would strand the connections hashed to it).
    # Behind a front, the front has the port and each replica a Unix socket of its own (see
    # serving.front, which says what a dead replica's socket does then).
    public = socket.create_server((args.host, args.port), backlog=2048)
    port = public.getsockname()[1]  # port 0: the one picked, for every replica
    _limit_model_threads(settings)
    runtime = Path(prepare_runtime(settings))  # one for all: an admin call or a scrape sees the whole server
    # Imported once here, after the variables they read at import (above): each replica is a fork
    # of this process, so a restarted one skips them (the supervisor never runs a prediction).
    from serving.supervisor import Child, Supervisor

    ModelServerApplication.import_app()
    argv = ["--host", args.host, "--port", str(port), "--shared-runtime"]
    argv += ["--workers", str(args.workers), "--timeout", str(args.timeout)]
    argv += ["--graceful-timeout", str(args.graceful_timeout), "--log-level", args.log_level]
    if args.profile_startup:
        argv.append("--profile-startup")
    children: list[Child] = []
    listeners = [public] * args.replicas  # every master accepts on the public socket
    if args.front != "none":
        listeners = [_unix_listener(runtime / f"app-{i}.sock") for i in range(1, args.replicas + 1)]
        try:
            argv_front = front_command(args.front, runtime, [Path(s.getsockname()) for s in listeners])
        except ValueError as exc:
            print(f"python -m serving: {exc}", file=sys.stderr)  # noqa: T201
            return 2
        children.append(Child("front", public, argv=argv_front))
    replica = functools.partial(main, argv)
    children += [Child(f"replica {i}", sock, target=replica) for i, sock in enumerate(listeners, 1)]
    logger.info(
        "serving on %s:%d: %d replicas of %d workers under a supervisor%s (runtime folder %s)",
        args.host,
        port,
        args.replicas,
        args.workers,
        f", {args.front} in front" if args.front != "none" else "",
        runtime,
    )
    return Supervisor(children).run()


def _unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale one from an earlier run replaced)."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(2048)
    return listener


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the settings and run gunicorn until it is stopped."""
    args = _parser().parse_args(argv)
    if args.profile_startup:
        os.environ[startup.PROFILE_SWITCH] = "1"
    if startup.enabled():
        startup.mark_exec()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        settings = ServerSettings()
    except ValidationError as exc:
        # Never echo the input: it may hold the admin token.
        problems = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("selfheal serve: invalid SELFHEAL_* settings:\n" + "\n".join(problems), file=sys.stderr)  # noqa: T201
        return 2
    forbid_pickle()  # before gunicorn forks: every worker inherits it (see serving.modelio)
    if args.replicas > 1 or args.front != "none":
        return _supervise(args, settings)
    if args.replicas < 1:
        print(f"selfheal serve: --replicas must be >= 1, got {args.replicas}", file=sys.stderr)  # noqa: T201
        return 2
    _limit_model_threads(settings)
    runtime = prepare_runtime(settings, shared=args.shared_runtime)
    logger.info(
        "serving %r from %s on %s:%d with %d workers (runtime folder %s)",
        settings.model_name,
        settings.tracking_uri or "the default tracking URI",
        args.host,
        args.port,
        args.workers,
        runtime,
    )
    options = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "worker_class": "serving.whole_responses.WholeResponseWorker",  # one write per answer: see the module
        "preload_app": True,
        "timeout": args.timeout,
        "graceful_timeout": args.graceful_timeout,
        "keepalive": 5,
        "backlog": 2048,
        "reuse_port": args.reuse_port,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": args.log_level,
        "proc_name": f"selfheal-serve:{args.port}",
        "post_fork": _post_fork,
        "child_exit": _child_exit,
        "control_socket_disable": True,
    }
    ModelServerApplication(options).run()
    return 0
