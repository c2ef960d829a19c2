"""The system under test, in a folder of its own: the whole loop, started and stopped as processes.

A sandbox is what the experiments inject faults into. Everything in it is the
real thing, started through the ``selfheal`` command line (never imported: the
chaos extension does not depend on ``flows``)::

    <root>/selfheal.yaml   its own config (data, trainer, gate, healing and slas from the project's)
    <root>/lake/           the Delta lake           <root>/landing/   the landing zone
    <root>/mlflow.db       the MLflow store         <root>/artifacts/ model files
    <root>/stream.parquet  the records the clients send (labeled; drift swaps it)
    <root>/payload.json    one request body for probes
    <root>/traffic.jsonl   the clients' log         <root>/ledger.jsonl  the fault ledger
    <root>/logs/, <root>/run/*.pid, <root>/sandbox.json (what is running where)

Processes: a Prefect server (shared by every flow run in the sandbox), the model
server (``selfheal serve``: two replicas of one worker under a supervisor), the
workload (``python -m chaos.workload``), the pipeline schedule (runs ``selfheal
pipeline run`` whenever a landing file has not been taken or a run left bronze ahead
of the last complete manifest, as the deployments "pipeline on new data" and its
schedule do) and the healer (``selfheal heal --interval 1``; with ``healing.enabled:
false`` it detects, opens incidents and repairs nothing), and the release controller
(``selfheal release watch``). The Prefect deployments and the gitops watcher (``selfheal
gitops watch``: the deployments and ``@champion`` as this checkout's git history says) are
started by the experiment that needs them (``chaos.gitops.actions``), and stopped with the
sandbox if it left them. Setup
lands a few clean batches and trains the first champion.

Example:
    >>> box = Sandbox(Path(".selfheal/chaos/sandbox"), project_config=Path("selfheal.yaml"))
    >>> box.up()                  # about a minute
    >>> env = box.environment()   # what experiments read (SELFHEAL_CHAOS_*)
    >>> box.down()

Or from a shell: ``python -m chaos.sandbox up|down|status --root DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from chaoslib.exceptions import ActivityFailed

from chaos import _landing
from chaos.serving import _server
from chaos.serving._server import find_server, resolve_command, wait_http_ok
from chaos.workload import read_records, wait_feature_names
from checkpoints.exceptions import SelfhealError
from serving import processes
from serving.settings import forbid_pickle

logger = logging.getLogger(__name__)

#: Sections of the project's config the sandbox keeps (the rest is the sandbox's own).
#: The ``data`` section of the stream the sandbox generates (``selfheal data generate``), used
#: when the project has none (the suite run in an empty folder): without its id column, every
#: new transaction id reads as a new category and opens false data-quality and drift incidents.
STREAM_DATA = {"target": "is_fraud", "task": "binary", "time_column": "event_time", "id_columns": ["transaction_id"]}
#: The trainer for that stream when the project has none: the newest 2 batches (2 days), as
#: the example selfheal.yaml says. Trained on the whole history, a drift repair learns
#: mostly the old world: in an empty folder both drift experiments' retrains failed
#: verification and resolved by a rollback after the MTTR.
STREAM_TRAINER = {"window_batches": 2}
_INHERITED = ("model_name", "data", "trainer", "gate", "thresholds", "healing", "slas", "release", "golden")
#: The golden probe, on in the sandbox whatever the project says (served-model-mismatch needs it:
#: every pipeline promotion freezes a set), replayed every 10 s so a swapped model is seen well
#: within its MTTR; the project's ``rows`` and ``tolerance`` are kept.
SANDBOX_GOLDEN = {"enabled": True, "interval_seconds": 10.0}
#: Monitor settings of the sandbox, under the project's own ``thresholds``. Its server flushes
#: the inference log every second (not every few), so a 2 s ingest lag loses no row; and its
#: faults are large (a 1.5-sigma covariate shift, a new concept, an inverted model), which a
#: 300-row window finds with power ~1 (``flows.monitor.detectors.thresholds``: a 0.5-sigma shift is
#: caught in every 500-row window). The demo uses the same values.
SANDBOX_THRESHOLDS: dict[str, Any] = {
    "min_window_rows": 300,
    "ingest_lag_seconds": 2.0,
    "prediction_reference_rows": 300,
    # The sandbox's healer watches 1 s windows: the default 3 windows of short inference
    # logging is 3 s, which a training run starving the server on 2 cores reaches (it
    # opened false stale_data incidents during data experiments). 10 windows is 10 s; a
    # server that is down still opens stale_data well inside the MTTR. Latency likewise:
    # 3 windows of high p99 is 3 s, which a pipeline run and a repair competing with the
    # server on 2 cores reach (the fresh-clone matrix of fca031c opened a false latency
    # incident during data-corrupt-garbage: p99 56, 50, 37 ms against ~14 ms). No
    # experiment's verdict rests on a latency incident; 10 s of high p99 still opens one.
    "consecutive": {"missing_rows": 10, "latency": 10},
}
#: The order processes are stopped in: clients and supervisors before what they supervise.
_STOP_ORDER = ("healer", "gitops", "release", "schedule", "workload", "server", "prefect")
#: The source checkout the sandbox runs (its git history is the gitops watcher's desired state).
PROJECT_DIR = Path(__file__).resolve().parents[1]
GITOPS_INTERVAL_SECONDS = 5.0
_MARKER = "# Written by chaos.sandbox"
PROFILES = ("embedded", "production")
_QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}


class SandboxError(SelfhealError, RuntimeError):
    """The sandbox could not be brought up (the message says which step and where its log is)."""


@dataclass
class SandboxState:
    """What ``sandbox.json`` records about a running sandbox."""

    root: str
    config: str
    serving_url: str
    prefect_api_url: str
    tracking_uri: str
    lake_root: str
    landing: str
    stream: str
    payload: str
    traffic_log: str
    ledger: str
    model_name: str
    target: str
    healing_enabled: bool
    healer: bool
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    profile: str = "embedded"
    stack_run: str = ""
    """production: the run folder of ``selfheal up --profile production`` (pid files, production.json)."""
    store_env: dict[str, str] = field(default_factory=dict)
    """production: what a client of its stores needs (S3 keys and endpoint, the Prefect API)."""


@dataclass
class Sandbox:
    """A sandboxed selfheal under ``root`` (see the module docstring)."""

    root: Path
    project_config: Path | None = None
    healing_enabled: bool | None = None
    batches: int = 3
    rows: int = 1000
    seed: int = 7
    workload_rate: float = 40.0
    heal_interval: float = 1.0
    schedule_interval: float = 3.0
    startup_timeout: float = 180.0
    profile: str = "embedded"
    """embedded: its own Prefect server, SQLite MLflow, a lake folder; production: ``selfheal up --profile
    production`` in ``<root>/stack`` (PostgreSQL, S3, two servers, two workers, the deployments)."""

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    # -- paths --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "selfheal.yaml"

    @property
    def state_path(self) -> Path:
        return self.root / "sandbox.json"

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def state(self) -> SandboxState | None:
        """The recorded state, or None when no sandbox was started here."""
        try:
            return SandboxState(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def is_running(self) -> bool:
        """Whether a sandbox is recorded here and its model server answers."""
        state = self.state()
        if state is None:
            return False
        return _server.ready(state.serving_url, timeout=2.0)[0]

    def environment(self) -> dict[str, str]:
        """The variables the experiments' configuration reads (``SELFHEAL_CHAOS_*``)."""
        state = self.state()
        if state is None:
            raise SandboxError(f"no sandbox under {self.root}")
        return {
            "SELFHEAL_CHAOS_SANDBOX": state.root,
            "SELFHEAL_CHAOS_CONFIG": state.config,
            "SELFHEAL_CHAOS_SERVING_URL": state.serving_url,
            "SELFHEAL_CHAOS_PREFECT_API_URL": state.prefect_api_url,
            "SELFHEAL_CHAOS_TRACKING_URI": state.tracking_uri,
            "SELFHEAL_CHAOS_LAKE": state.lake_root,
            "SELFHEAL_CHAOS_LANDING": state.landing,
            "SELFHEAL_CHAOS_STREAM": state.stream,
            "SELFHEAL_CHAOS_PAYLOAD": state.payload,
            "SELFHEAL_CHAOS_TRAFFIC_LOG": state.traffic_log,
            "SELFHEAL_CHAOS_LEDGER": state.ledger,
            "SELFHEAL_CHAOS_MODEL_NAME": state.model_name,
            "SELFHEAL_CHAOS_TARGET": state.target,
            "SELFHEAL_CHAOS_SERVER_PID_FILE": str(self.root / "run" / "server.pid"),
            "SELFHEAL_ADMIN_TOKEN": self._admin_token(),
            "SELFHEAL_CHAOS_STACK_RUN": state.stack_run,
            **state.store_env,
        }

    # -- bring up -----------------------------------------------------------------
    def _project(self) -> dict[str, Any]:
        if self.project_config is None or not Path(self.project_config).exists():
            return {}
        loaded = yaml.safe_load(Path(self.project_config).read_text()) or {}
        return {k: v for k, v in loaded.items() if k in _INHERITED} if isinstance(loaded, dict) else {}

    def _write_config(self, port: int, home: str = ".", landing: str = "landing") -> dict[str, Any]:
        cfg: dict[str, Any] = {"project": "selfheal-chaos-sandbox", "model_name": "fraud-detector", **self._project()}
        cfg.setdefault("data", dict(STREAM_DATA))
        cfg.setdefault("trainer", dict(STREAM_TRAINER))
        cfg.update(
            {
                "home": home,
                "lake": {"root": "lake", "storage_options": {}},
                "landing": {"path": landing, "format": "parquet", "fallback": None},
                "serving": {
                    "host": "127.0.0.1",
                    "port": port,
                    "workers": 1,
                    "replicas": 2,  # serving-kill-replica kills one; serving-kill-server kills them all
                    "url": f"http://127.0.0.1:{port}",
                    "poll_seconds": 1.0,
                },
            }
        )
        # The deployments' definitions are this checkout's: config-drift creates them, edits them by
        # hand and starts the gitops watcher, which passes every 5 s.
        cfg["gitops"] = {"repo": str(PROJECT_DIR), "interval_seconds": GITOPS_INTERVAL_SECONDS, "self_heal": True}
        cfg["thresholds"] = {**SANDBOX_THRESHOLDS, **(cfg.get("thresholds") or {})}
        cfg["golden"] = {**(cfg.get("golden") or {}), **SANDBOX_GOLDEN}
        healing = dict(cfg.get("healing") or {})
        if self.healing_enabled is not None:
            healing["enabled"] = self.healing_enabled
        cfg["healing"] = healing
        self.config_path.write_text(
            f"{_MARKER}: the chaos suite's system under test. Do not edit; it is rebuilt.\n"
            + yaml.safe_dump(cfg, sort_keys=False)
        )
        return cfg

    def _admin_token(self) -> str:
        path = self.root / "run" / "admin-token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def _env(self, prefect_api_url: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "PREFECT_API_"))}
        env.update(_QUIET_ENV)
        env.update(
            {
                "SELFHEAL_CONFIG": str(self.config_path),
                "SELFHEAL_ADMIN_TOKEN": self._admin_token(),
                "PREFECT_HOME": str(self.root / "prefect"),
                "SELFHEAL_LOG_FLUSH_SECONDS": "1",
                # The one place the healer may explore remedies (healing.learning.explore_epsilon).
                "SELFHEAL_CHAOS_SANDBOX": str(self.root),
            }
        )
        if prefect_api_url:
            env["PREFECT_API_URL"] = prefect_api_url
        if self.healing_enabled is not None:
            env["SELFHEAL_HEALING__ENABLED"] = "true" if self.healing_enabled else "false"
        forbid_pickle(env)
        return env

    def _start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self._log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                resolve_command(argv),
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.root / "run").mkdir(exist_ok=True)
        (self.root / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _run(self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float) -> str:
        log = self._log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            resolve_command(argv), cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
        )
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} failed ({done.returncode}); see {log}:\n{done.stderr[-1500:]}")
        return done.stdout

    def up(self) -> SandboxState:
        """Build the sandbox from scratch and start its processes; stops what it started if a step fails."""
        if self.state() is not None:
            raise SandboxError(f"a sandbox is recorded under {self.root} ({self.state_path}); stop it first (down)")
        if self.root.exists() and any(self.root.iterdir()):
            if not self.config_path.exists() or _MARKER not in self.config_path.read_text():
                raise SandboxError(f"{self.root} is not empty and is not a sandbox: refusing to wipe it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        if self.profile not in PROFILES:
            raise SandboxError(f"unknown profile {self.profile!r}: one of {', '.join(PROFILES)}")
        try:
            return self._up_production() if self.profile == "production" else self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> SandboxState:
        started = time.monotonic()
        port, prefect_port = processes.free_port(), processes.free_port()
        cfg = self._write_config(port)
        target = str((cfg.get("data") or {}).get("target", "is_fraud"))
        prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        env = self._env(prefect_api)
        prefect = self._start(
            "prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)], env
        )
        self._generate_data(env)  # while the Prefect server starts
        wait_http_ok(f"{prefect_api}/health", prefect, self.startup_timeout)
        logger.info("sandbox: training the first champion")
        self._run("pipeline-initial", ["selfheal", "-c", str(self.config_path), "pipeline", "run"], env, timeout=600)
        url = f"http://127.0.0.1:{port}"
        server = self._start("server", ["selfheal", "-c", str(self.config_path), "serve"], env)
        wait_http_ok(f"{url}/ready", server, self.startup_timeout)
        self._write_payload(url, target)
        pids = {"prefect": prefect.pid, "server": server.pid, **self._start_clients(url, target, env)}
        state = self._state(cfg, url, prefect_api, target, pids)
        self.state_path.write_text(json.dumps(asdict(state), indent=2))
        logger.info("sandbox up under %s in %.0fs (server %s)", self.root, time.monotonic() - started, url)
        return state

    def _up_production(self) -> SandboxState:
        """``selfheal up --profile production`` under ``<root>/stack``; the first batches landed (the
        deployments train the first champion on the workers); then the clients and the healer."""
        started = time.monotonic()
        port, prefect_port = processes.free_port(), processes.free_port()
        stack = self.root / "stack"
        # Absolute paths: the stack runs its services from the project's folder, not from ours.
        cfg = self._write_config(port, home=str(stack), landing=str(self.root / "landing"))
        target = str((cfg.get("data") or {}).get("target", "is_fraud"))
        env = self._env()
        env["SELFHEAL_MISSED_HEARTBEATS"] = "2"  # a killed worker's run is Crashed after 60 s, not 90
        up = ["selfheal", "-c", str(self.config_path), "up", "--profile", "production"]
        up += ["--prefect-port", str(prefect_port), "--timeout", str(self.startup_timeout)]
        logger.info("sandbox: starting the production stack")
        self._run("stack-up", up, env, timeout=self.startup_timeout + 60)
        # From here on everything reads the stack's effective config: the stores' URIs in it.
        effective = yaml.safe_load((stack / "run" / "selfheal.yaml").read_text())
        self.config_path.write_text(
            f"{_MARKER}: the chaos suite's system under test (production profile). Do not edit; it is rebuilt.\n"
            + yaml.safe_dump(effective, sort_keys=False)
        )
        stores = json.loads((stack / "run" / "production.json").read_text())["environment"]
        endpoint = stores["MLFLOW_S3_ENDPOINT_URL"]
        # The probes open the lake by its root alone: delta-rs and s3fs take the store from these.
        store_env = {k: v for k, v in stores.items() if k != "PREFECT_API_URL"}
        store_env.update(AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true")
        prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        env = {**self._env(prefect_api), **store_env}
        self._generate_data(env)  # the landing watcher announces the files: the pipeline deployment runs
        url = f"http://127.0.0.1:{port}"
        logger.info("sandbox: waiting for the first champion, trained by a worker")
        processes.wait_until(lambda: _server.ready(url, timeout=2.0)[0], 600, f"{url}/ready", interval=1.0)
        self._write_payload(url, target)
        workload = self._start("workload", self._workload_argv(url, target), env)
        pids = {"workload": workload.pid}
        healer = self._start_healer(env)
        if healer is not None:
            pids["healer"] = healer.pid
        state = self._state(effective, url, prefect_api, target, pids)
        state.tracking_uri, state.lake_root = str(effective["tracking_uri"]), str(effective["lake"]["root"])
        state.profile, state.stack_run, state.store_env = "production", str(stack / "run"), store_env
        self.state_path.write_text(json.dumps(asdict(state), indent=2))
        logger.info("production sandbox up under %s in %.0fs (server %s)", self.root, time.monotonic() - started, url)
        return state

    def _generate_data(self, env: dict[str, str]) -> None:
        """The first landing batches, and the next batch as the stream the clients send."""
        gen = ["selfheal", "-c", str(self.config_path), "data", "generate", "--rows", str(self.rows)]
        gen += ["--seed", str(self.seed)]
        self._run("generate", [*gen, "--batches", str(self.batches)], env, timeout=120)
        stream_dir = self.root / "stream-batches"
        out = self._run(
            "generate-stream",
            [*gen, "--batches", "1", "--start", str(self.batches), "--out", str(stream_dir)],
            env,
            120,
        )
        _landing.write_atomic(self.root / "stream.parquet", Path(out.strip().splitlines()[-1]).read_bytes())
        shutil.rmtree(stream_dir, ignore_errors=True)

    def _start_clients(self, url: str, target: str, env: dict[str, str]) -> dict[str, int]:
        """What runs around the server: the workload, the pipeline schedule, the healer, the release controller."""
        workload = self._start("workload", self._workload_argv(url, target), env)
        schedule = self._start(
            "schedule",
            [sys.executable, "-m", "chaos.sandbox", "schedule", "--root", str(self.root)]
            + ["--every", str(self.schedule_interval)],
            env,
        )
        pids = {"workload": workload.pid, "schedule": schedule.pid}
        healer = self._start_healer(env)
        if healer is not None:
            pids["healer"] = healer.pid
        # The release controller: analyses any shadow/canary release to its verdict.
        watch = ["selfheal", "-c", str(self.config_path), "release", "watch", "--interval", "1"]
        pids["release"] = self._start("release", watch, env).pid
        return pids

    def _workload_argv(self, url: str, target: str) -> list[str]:
        return [sys.executable, "-m", "chaos.workload", "--url", url, "--source", str(self.root / "stream.parquet")] + [
            "--log",
            str(self.root / "traffic.jsonl"),
            "--target",
            target,
            "--rate",
            str(self.workload_rate),
        ]

    def _state(
        self, cfg: dict[str, Any], url: str, prefect_api: str, target: str, pids: dict[str, int]
    ) -> SandboxState:
        healing = cfg["healing"].get("enabled", True) if self.healing_enabled is None else self.healing_enabled
        return SandboxState(
            root=str(self.root),
            config=str(self.config_path),
            serving_url=url,
            prefect_api_url=prefect_api,
            tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}",
            lake_root=str(self.root / "lake"),
            landing=str(self.root / "landing"),
            stream=str(self.root / "stream.parquet"),
            payload=str(self.root / "payload.json"),
            traffic_log=str(self.root / "traffic.jsonl"),
            ledger=str(self.root / "ledger.jsonl"),
            model_name=str(cfg.get("model_name", "fraud-detector")),
            target=target,
            healing_enabled=bool(healing),
            healer="healer" in pids,
            pids=pids,
        )

    def _write_payload(self, url: str, target: str) -> None:
        """One request body for the probes: a stream record cut to the model's features."""
        names = wait_feature_names(url, wait=60.0) or []
        record = read_records(self.root / "stream.parquet")[0]
        body = (
            {k: v for k, v in record.items() if k in names}
            if names
            else {k: v for k, v in record.items() if k != target}
        )
        (self.root / "payload.json").write_text(json.dumps(body, default=str))

    def _start_healer(self, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        argv = ["selfheal", "-c", str(self.config_path), "heal", "--interval", str(self.heal_interval)]
        healer = self._start("healer", argv, env)
        time.sleep(3.0)
        if healer.poll() is not None:
            logger.warning(
                "the healer exited at once (%s); experiments that need healing will fail. See %s",
                healer.returncode,
                self._log("healer"),
            )
            (self.root / "run" / "healer.pid").unlink(missing_ok=True)
            return None
        return healer

    def restart_healer(self, overrides: Mapping[str, str] | None = None) -> int | None:
        """Stop the sandbox's healer and start it again with ``overrides`` in its environment.

        E.g. ``{"SELFHEAL_HEALING__APPROVAL": '{"rollback": "approve"}'}`` for one experiment;
        called again without overrides, the healer runs on the config alone. Returns its pid
        (None: it exited at once, see its log).
        """
        state = self.state()
        if state is None:
            raise SandboxError(f"no sandbox under {self.root}")
        pid = processes.read_pid_file(self.root / "run" / "healer.pid")
        if pid is not None:
            stop_own_group(pid, 15.0)
        log = self._log("healer")
        before = log.stat().st_size if log.exists() else 0
        healer = self._start_healer({**self._env(state.prefect_api_url), **state.store_env, **(overrides or {})})
        if healer is None:
            return None

        def ticking() -> bool:  # it says so once warmed up (the registry client built), before its first tick
            with open(log, "rb") as text:
                text.seek(before)
                return b"selfheal heal: healing" in text.read()

        processes.wait_until(ticking, self.startup_timeout, "the restarted healer to warm up", interval=0.5)
        return healer.pid

    def pipeline_busy(self) -> str | None:
        """Why the sandbox's pipeline is not idle: a run going, or work left for the schedule (None: idle)."""
        state = self.state()
        if state is None:
            return None
        going = processes.find(["pipeline", "run", state.config])
        if going:
            return f"pipeline run(s) {going} going"
        return _landing.unfinished(state.landing, state.lake_root)

    # -- tear down ----------------------------------------------------------------
    def down(self, timeout: float = 30.0) -> list[int]:
        """Stop every process of the sandbox (and a server the healer restarted); the files stay for inspection."""
        stopped: list[int] = []
        run = self.root / "run"
        names = [n for n in _STOP_ORDER if (run / f"{n}.pid").exists()]
        state = self.state()
        # Ours in order, then any other pid file there (a server the healer started, say).
        others = sorted(p.stem for p in run.glob("*.pid") if p.stem not in names) if run.is_dir() else []
        for name in [*names, *others]:
            pid = processes.read_pid_file(run / f"{name}.pid")
            if pid is not None:
                stopped += _stop_tree(pid, timeout)
            (run / f"{name}.pid").unlink(missing_ok=True)
        # The production stack's own pid files, whether or not the sandbox got as far as recording its state.
        if any((self.root / "stack" / "run").glob("*.pid")):
            self._stack_down()
        if state is not None:
            stopped += self._stop_server_at(state.serving_url, timeout)
            self.state_path.unlink(missing_ok=True)
        return stopped

    def _stack_down(self) -> None:
        """``selfheal down`` for the production stack (its stores last); a failure is logged, not raised."""
        try:
            self._run("stack-down", ["selfheal", "-c", str(self.config_path), "down"], self._env(), timeout=180)
        except (SandboxError, subprocess.TimeoutExpired) as exc:
            logger.warning("the production stack did not stop cleanly: %s", exc)

    def _stop_server_at(self, url: str, timeout: float) -> list[int]:

        try:
            master = find_server(url).master
        except ActivityFailed:
            return []
        return _stop_tree(master, timeout)


def stop_own_group(pid: int, timeout: float) -> list[int]:
    """SIGTERM ``pid`` and its process group (SIGKILL after ``timeout``), not its descendants in other sessions.

    A model server the healer restarted (``restart_serving``) is the healer's child in a
    session of its own: restarting the healer must not take the server down with it.
    """
    group = sorted({pid, *processes.process_group(pid)})
    processes.stop(group, grace=timeout)
    return group


def _stop_tree(pid: int, timeout: float) -> list[int]:
    """SIGTERM ``pid``, its process group and its descendants; SIGKILL what is left after ``timeout``."""
    tree = processes.process_tree(pid)
    processes.stop(tree, grace=timeout)
    return tree


# -- the pipeline schedule ----------------------------------------------------------
def run_schedule(root: Path, every: float) -> int:
    """Run the pipeline whenever it has work left (until SIGTERM).

    Work left: a landing file in neither bronze nor quarantine (new data), or bronze
    ahead of the last complete run manifest (a run that never finished: Prefect does
    not retry a crashed run, the next one resumes it).
    """
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    config = root / "selfheal.yaml"
    loaded = yaml.safe_load(config.read_text()) or {}
    landing = str(root / (loaded.get("landing") or {}).get("path", "landing"))
    lake = str(root / (loaded.get("lake") or {}).get("root", "lake"))
    while not stop["now"]:
        try:
            reason = _landing.unfinished(landing, lake)
        except Exception as exc:  # noqa: BLE001 - the lake may be mid-repair; look again next tick
            logger.warning("schedule: cannot tell whether the pipeline is behind: %s", exc)
            reason = None
        if reason:
            logger.info("schedule: %s; running the pipeline", reason)
            done = subprocess.run(
                resolve_command(["selfheal", "-c", str(config), "pipeline", "run"]),
                cwd=root,
                start_new_session=True,
                check=False,
            )
            logger.info("schedule: pipeline run exited with %d", done.returncode)
        deadline = time.monotonic() + every
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.sandbox", description="The chaos suite's system under test.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "build and start a sandbox"), ("down", "stop it"), ("status", "print its state")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--root", default=".selfheal/chaos/sandbox", help="sandbox folder")
        if name == "up":
            cmd.add_argument("--project-config", default="selfheal.yaml", help="the project's selfheal.yaml")
            cmd.add_argument("--no-healing", action="store_true", help="healing.enabled: false")
            cmd.add_argument(
                "--profile",
                choices=PROFILES,
                default="embedded",
                help="embedded (default): SQLite, a lake folder; production: PostgreSQL, S3, two workers",
            )
    schedule = sub.add_parser("schedule", help="(internal) the pipeline schedule loop")
    schedule.add_argument("--root", required=True)
    schedule.add_argument("--every", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "schedule":
        return run_schedule(Path(args.root).resolve(), args.every)
    box = Sandbox(Path(args.root))
    if args.command == "up":
        box.project_config = Path(args.project_config)
        box.healing_enabled = False if args.no_healing else None
        box.profile = args.profile
        sys.stdout.write(json.dumps(asdict(box.up()), indent=2) + "\n")
    elif args.command == "down":
        sys.stdout.write(f"stopped {len(box.down())} processes\n")
    else:
        recorded = box.state()
        running = box.is_running()
        sys.stdout.write(json.dumps({"running": running, **(asdict(recorded) if recorded else {})}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
