"""``selfheal up`` / ``selfheal down``: the local stack, in the background, on one machine.

``up`` starts, each in its own session (process group) with a pid file under
``<home>/run/`` and its log beside it:

- ``prefect-server``: ``prefect server start`` on 127.0.0.1, SQLite under ``<home>/prefect``;
- ``serving``: ``selfheal serve`` (gunicorn's master and its workers);
- ``landing-watcher``: emits a ``selfheal.landing.file.created`` Prefect event for each
  file that lands (a local landing folder only; object stores send their own notifications);
- ``prefect-worker``: a process worker for the ``local`` work pool;

then registers the ``local`` deployments of ``deployments/prefect.yaml`` with
``prefect deploy``, adds Prefect's zombie-run automation (a worker's run that misses
``MISSED_HEARTBEATS`` heartbeats is marked Crashed, which frees its deployment's
concurrency slot: a run whose worker died would otherwise hold the slot until Prefect's
lease expires, 5 min 27 s measured) and prints the UI address and what is scheduled. ``down`` stops
them newest first: SIGTERM to every process of the group and every descendant
(flow runs start their own sessions), SIGKILL to whatever is left after a grace
period, so nothing stays behind.

``up(profile="production")`` runs the production topology on this machine instead
(``flows.local.production``, under ``<home>/production``): PostgreSQL holding the
Prefect server's and the MLflow server's databases, an S3 store (SeaweedFS) holding
the lake and MLflow's artifacts, then the model server as two replicas sharing the serving
port (``selfheal serve --replicas 2``: SO_REUSEPORT, a supervisor starting a dead replica
again), the landing watcher and two process
workers of the ``local`` pool. The services read ``<home>/run/selfheal.yaml`` (the
config with the stores' URIs) and get the stores' keys in their environment;
``<home>/run/production.env`` exports both for a shell.

Example:
    >>> stack = Stack.from_config(load_config(), prefect_port=4200)
    >>> stack.up()        # returns the summary to print
    >>> stack.down()
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import yaml
from prefect.events.clients import get_events_client
from prefect.events.schemas.events import Event, Resource

from checkpoints.exceptions import SelfhealError, ServingUnavailable
from flows.config import SelfhealConfig, load_config
from flows.gitops.desired import MONITOR_FLOW, monitor_parameters
from flows.prefect_runs import deployments as prefect_deployments
from flows.prefect_runs import prefect_api
from serving import processes
from serving.client import ServingClient
from serving.settings import forbid_pickle

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
PREFECT_FILE = PROJECT_DIR / "deployments" / "prefect.yaml"
WORK_POOL = "local"
LANDING_EVENT = "selfheal.landing.file.created"
#: Seconds between the flow-run heartbeats of the workers' runs, unless the environment sets
#: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (Prefect's minimum is 30; its default, 180).
HEARTBEAT_SECONDS = 30
#: Heartbeats a worker's run may miss before the unresponsive-run automation marks it Crashed,
#: unless the environment sets ``SELFHEAL_MISSED_HEARTBEATS`` (at least 2: a live run whose
#: heartbeat comes late must not be crashed).
MISSED_HEARTBEATS = 3
UNRESPONSIVE_AUTOMATION = "selfheal: crash unresponsive flow runs"
LANDING_RESOURCE_PREFIX = "selfheal.landing.file."
#: Started in this order, stopped in the reverse one.
SERVICES = ("prefect-server", "serving", "landing-watcher", "prefect-worker")
PROFILES = ("embedded", "production")
#: The production profile's: the stores, then two of each server. Stopped in the reverse order
#: (PostgreSQL last: the servers on it go first).
PRODUCTION_SERVICES = (
    "postgres",
    "object-store",
    "mlflow-server",
    "prefect-server",
    "serving",
    "landing-watcher",
    "prefect-worker-1",
    "prefect-worker-2",
)
#: Model servers the production profile runs on one port at least (``serving.replicas``).
PRODUCTION_REPLICAS = 2
#: Every service of either profile, in start order (what ``down`` looks for, in reverse).
_ALL_SERVICES = (
    "postgres",
    "object-store",
    "mlflow-server",
    "prefect-server",
    "serving",
    "serving-1",  # the production profile's two instances before serving.replicas: `down` after an upgrade
    "serving-2",
    "landing-watcher",
    "prefect-worker",
    "prefect-worker-1",
    "prefect-worker-2",
)
_PRODUCTION_STATE = "production.json"
_STOP_GRACE_SECONDS = 15.0


# -- processes ------------------------------------------------------------------------------
def _started_at(pid: int) -> float | None:
    """The process's start time (tells a pid from its reuse); None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def terminate(pids: Iterable[int], grace: float = _STOP_GRACE_SECONDS) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL the rest.

    Raises:
        SelfhealError: some survived SIGKILL.
    """
    left = processes.stop(pids, grace=grace)
    if left:
        raise SelfhealError(f"processes {left} survived SIGKILL")


@dataclass(frozen=True)
class PidFile:
    """What ``up`` recorded about one background process.

    Attributes:
        name: the service (``prefect-server``, ``serving``, ...).
        pid: its pid, also its process group id (it leads its own session).
        started_at: its start time (epoch seconds), so a reused pid is never signalled.
        argv: the command line, for people reading the file.
    """

    name: str
    pid: int
    started_at: float | None
    argv: list[str] = field(default_factory=list)

    def running(self) -> bool:
        now = _started_at(self.pid)
        # A start time is derived from boot time, which the clock's adjustments move a little.
        return self.started_at is not None and now is not None and abs(now - self.started_at) < 1.0

    @classmethod
    def read(cls, path: Path) -> PidFile | None:
        try:
            data = json.loads(path.read_text())
            return cls(str(data["name"]), int(data["pid"]), data.get("started_at"), list(data.get("argv", [])))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"name": self.name, "pid": self.pid, "started_at": self.started_at, "argv": self.argv})
        )
        tmp.replace(path)


# -- the stack ------------------------------------------------------------------------------
@dataclass
class Stack:
    """The local stack of one selfheal home.

    Attributes:
        cfg: the loaded configuration (its ``home`` holds ``run/`` and ``prefect/``).
        config_path: the selfheal.yaml the services read (None: defaults).
        prefect_port: port of the Prefect server on 127.0.0.1.
    """

    cfg: SelfhealConfig
    config_path: str | None
    prefect_port: int = 4200
    profile: str = "embedded"
    _store_env: dict[str, str] = field(default_factory=dict)
    _postgres_data: str = ""

    @classmethod
    def from_config(cls, cfg: SelfhealConfig, prefect_port: int = 4200, profile: str = "embedded") -> Stack:
        if profile not in PROFILES:
            raise SelfhealError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        return cls(cfg, cfg.source_path, prefect_port, profile)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.home) / "run"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def serving_url(self) -> str:
        return f"http://{self.cfg.serving.host}:{self.cfg.serving.port}"

    def environment(self) -> dict[str, str]:
        """Every service's environment: an isolated Prefect home and API, the config, no telemetry."""
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(Path(self.cfg.home) / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            MLFLOW_ENABLE_TELEMETRY="false",
            PYTHONUNBUFFERED="1",
        )
        env.pop("PREFECT_PROFILE", None)
        env.update(self._store_env)
        if self.config_path:
            env["SELFHEAL_CONFIG"] = self.config_path
        forbid_pickle(env)
        return env

    def pid_files(self) -> list[PidFile]:
        found = [PidFile.read(self.run_dir / f"{name}.pid") for name in _ALL_SERVICES]
        return [p for p in found if p is not None]

    # -- up --------------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> str:
        """Start the stack and register the deployments; returns the summary to print.

        Raises:
            SelfhealError: part of the stack is already running, a port is taken, or a
                service did not come up (what ``up`` had started is stopped again).
        """
        unresponsive_after()  # a bad SELFHEAL_MISSED_HEARTBEATS fails before anything starts
        running = [p.name for p in self.pid_files() if p.running()]
        if running:
            raise SelfhealError(f"already running: {', '.join(running)} (run `selfheal down` first)")
        for port, what in ((self.prefect_port, "the Prefect server"), (self.cfg.serving.port, "the model server")):
            if processes.port_in_use(port):
                raise SelfhealError(f"port {port} for {what} is already in use")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        if self.profile == "production":
            try:
                self._start_stores(deadline)
            except BaseException:
                self.down()
                raise
        elif self.config_path is None:
            # No selfheal.yaml: the services run elsewhere (cwd, pull step), so they get the
            # effective settings written out rather than looking for a file of their own.
            effective = self.run_dir / "selfheal.yaml"
            effective.write_text(yaml.safe_dump(self.cfg.model_dump(mode="json", by_alias=True)))
            self.config_path = str(effective)
        try:
            return self._up(deadline)
        except BaseException:
            self.down()
            raise

    def _start_stores(self, deadline: float) -> None:
        """The production profile's stores, left running with pid files; the config and environment on them."""
        from flows.local.production import ProductionStores  # its stores' clients: only this profile's

        stores = ProductionStores(
            Path(self.cfg.home) / "production",
            prefect_port=self.prefect_port,
            keep=True,
            timeout=max(deadline - time.monotonic(), 1.0),
            # The embedded profile's server inherits the caller's settings; this one gets its server settings.
            server_settings={k: v for k, v in os.environ.items() if k.startswith("PREFECT_SERVER_")},
        )
        with stores:
            detached = stores.detach()
        for name, pid in detached.pids.items():
            PidFile(name, pid, _started_at(pid), processes.argv(pid)).write(self.run_dir / f"{name}.pid")
        self._store_env = stores.environment()
        data = self.cfg.model_dump(mode="json", by_alias=True)
        settings = stores.settings()
        data.update(tracking_uri=settings["tracking_uri"], artifact_root=settings["artifact_root"])
        data["lake"] = {**data["lake"], **settings["lake"]}
        data["serving"]["replicas"] = max(data["serving"]["replicas"], PRODUCTION_REPLICAS)
        effective = self.run_dir / "selfheal.yaml"
        effective.write_text(yaml.safe_dump(data))
        self.config_path = str(effective)
        self.cfg = load_config(effective, check_estimator=False)
        state = {
            "config": self.config_path,
            "environment": self._store_env,
            "databases": {"mlflow": stores.mlflow_database, "prefect": stores.prefect_database},
            "postgres_data": str(stores.postgres.data),
            "remove": detached.remove,
        }
        (self.run_dir / _PRODUCTION_STATE).write_text(json.dumps(state, indent=2))
        self._postgres_data = str(stores.postgres.data)
        exports = {**self._store_env, "SELFHEAL_CONFIG": self.config_path}
        lines = (f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
        (self.run_dir / "production.env").write_text("".join(lines))

    def _up(self, deadline: float) -> str:
        py = sys.executable
        production = self.profile == "production"
        if not production:
            self._spawn(
                "prefect-server",
                [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)],
            )
        self._spawn("serving", [py, "-m", "flows.cli", "serve"])  # serving.replicas of the (effective) config
        watching = "://" not in self.cfg.landing.path
        if watching:
            self._spawn("landing-watcher", [py, "-m", "flows.cli", "watch-landing", self.cfg.landing.path])
        from prefect.workers.process import ProcessWorker  # while the server starts

        template = ProcessWorker.get_default_base_job_template()
        self._wait_http("prefect-server", f"{self.api_url}/health", deadline)
        self._ensure_work_pool(template)
        workers = ["prefect-worker-1", "prefect-worker-2"] if production else ["prefect-worker"]
        heartbeat = heartbeat_seconds()
        for name in workers:
            worker = [py, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
            self._spawn(
                name, [*worker, "--name", f"{WORK_POOL}-{name}"], {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat)}
            )
        skipped = self._deploy()
        self._ensure_unresponsive_run_automation(unresponsive_after())
        self._set_monitor_parameters()
        self._wait_serving(deadline)
        return self.summary(skipped, watching)

    def _ensure_work_pool(self, template: dict[str, Any]) -> None:
        body = {"name": WORK_POOL, "type": "process", "base_job_template": template}
        if prefect_api("POST", f"{self.api_url}/work_pools/", body, ok=(409,)) is None:  # kept from an earlier `up`
            prefect_api("PATCH", f"{self.api_url}/work_pools/{WORK_POOL}", {"base_job_template": template})

    def _ensure_unresponsive_run_automation(self, window: int) -> None:
        """Prefect's zombie-run automation, created or brought up to date (docs: "detect zombie flows").

        A run whose process is gone (its worker killed with it, a lost machine) stops sending
        heartbeats; ``window`` seconds after its last one Prefect marks it Crashed.
        """
        from prefect.client.schemas.objects import StateType
        from prefect.events.actions import ChangeFlowRunState
        from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
        from prefect.events.schemas.events import ResourceSpecification

        ended = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}
        automation = AutomationCore(
            name=UNRESPONSIVE_AUTOMATION,
            description=f"A flow run with no heartbeat for {window} s (its process is gone) is marked Crashed.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *ended},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=window),
            ),
            actions=[
                ChangeFlowRunState(
                    name=None,
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {window} s: the run's process is gone",
                    force=False,  # through Prefect's orchestration: a run that ended meanwhile stays as it ended
                )
            ],
        )
        body = automation.model_dump(mode="json", exclude={"owner_resource"})  # an update refuses the field
        found = [a for a in prefect_api("POST", f"{self.api_url}/automations/filter", {}) if a["name"] == body["name"]]
        if found:  # kept from an earlier `up` (the production profile keeps Prefect's database)
            prefect_api("PUT", f"{self.api_url}/automations/{found[0]['id']}", body)
        else:
            prefect_api("POST", f"{self.api_url}/automations/", body)

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> None:
        log = (self.run_dir / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=PROJECT_DIR,
                env={**self.environment(), **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        PidFile(name, proc.pid, _started_at(proc.pid), argv).write(self.run_dir / f"{name}.pid")
        logger.info("started %s (pid %d)", name, proc.pid)

    def _run(self, what: str, argv: list[str]) -> str:
        done = subprocess.run(
            argv, cwd=PROJECT_DIR, env=self.environment(), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise SelfhealError(f"{what} failed ({' '.join(argv[2:])}):\n{(done.stdout + done.stderr)[-3000:]}")
        return done.stdout

    def _wait_http(self, name: str, url: str, deadline: float) -> None:
        pid = PidFile.read(self.run_dir / f"{name}.pid")

        def answers() -> bool:
            if pid is not None and not pid.running():
                raise SelfhealError(
                    f"{name} exited while starting; see {self.run_dir / (name + '.log')}:\n{self._tail(name)}"
                )
            return processes.http_ok(url)

        try:
            processes.wait_until(answers, deadline - time.monotonic(), f"{name} at {url}", interval=0.25)
        except TimeoutError:
            raise SelfhealError(f"{name} did not answer {url} in time; see {self.run_dir / (name + '.log')}") from None

    def _wait_serving(self, deadline: float) -> None:
        """Wait until the model server is up (/health: a model may not be trained yet).

        Replicas sharing the port answer in turn; each is waited for by its own master
        (a child of the supervisor) listening on the port.
        """
        name, replicas = "serving", self.cfg.serving.replicas
        pid = PidFile.read(self.run_dir / f"{name}.pid")
        log = self.run_dir / f"{name}.log"

        def listening() -> bool:
            if pid is None:
                return True
            port = self.cfg.serving.port
            servers = processes.replica_masters(pid.pid) or [pid.pid]  # a supervisor's, or one master
            return len(servers) == replicas and all(
                any(port in processes.listening_ports(p) for p in processes.process_tree(server)) for server in servers
            )

        try:
            with ServingClient(self.serving_url) as server:
                server.wait_healthy(deadline - time.monotonic(), alive=pid.running if pid is not None else None)
            processes.wait_until(listening, max(deadline - time.monotonic(), 0.0), f"{name} listening", interval=0.25)
        except (ServingUnavailable, TimeoutError) as exc:
            if pid is not None and not pid.running():
                raise SelfhealError(f"{name} exited while starting; see {log}:\n{self._tail(name)}") from exc
            raise SelfhealError(f"{name} did not answer {self.serving_url}/health in time; see {log}") from exc

    def _tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.run_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _deploy(self) -> list[str]:
        """``prefect deploy`` every ``local`` deployment whose flow file is in this checkout.

        Returns the entrypoints left out (their module is not written yet).
        """
        if not PREFECT_FILE.exists():
            raise SelfhealError(f"{PREFECT_FILE} not found: `selfheal up` runs from a source checkout")
        entries = [d for d in local_deployments() if (PROJECT_DIR / d["entrypoint"].split(":")[0]).exists()]
        skipped = [d["entrypoint"] for d in local_deployments() if d not in entries]
        names: list[str] = []
        for entry in entries:
            names += ["--name", f"{entry['entrypoint'].split(':')[1].replace('_', '-')}/{WORK_POOL}"]
        py = sys.executable
        self._run(
            "prefect deploy",
            [py, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), *names],
        )
        return skipped

    def _set_monitor_parameters(self) -> None:
        """The monitor deployment's parameters from the loaded config (prefect.yaml only mirrors the defaults)."""
        parameters = monitor_parameters(self.cfg)
        for deployment in self.deployments():
            if deployment["flow_name"] == MONITOR_FLOW:
                prefect_api("PATCH", f"{self.api_url}/deployments/{deployment['id']}", {"parameters": parameters})

    # -- what is there -------------------------------------------------------------------------
    def deployments(self) -> list[dict[str, Any]]:
        """The ``local`` pool's deployments, each with ``flow_name`` and the automations that run it."""
        return prefect_deployments(self.api_url, WORK_POOL)

    def next_run(self, deployment_id: str) -> str | None:
        body = {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 1,
        }
        runs = prefect_api("POST", f"{self.api_url}/flow_runs/filter", body)
        return str(runs[0]["expected_start_time"]) if runs else None

    def summary(self, skipped: list[str], watching: bool) -> str:
        ui = self.api_url.removesuffix("/api")
        production = self.profile == "production"
        lines = [
            "selfheal is up" + (" (production profile)" if production else ""),
            # The production profile's Prefect server runs without its UI (as the k8s overlay does).
            f"  Prefect {'API' if production else 'UI '}      {self.api_url if production else ui}"
            f"   (export PREFECT_API_URL={self.api_url})",
            f"  model server     {self.serving_url}   (/health /ready /metrics /predict)",
        ]
        if production:
            s3 = self._store_env.get("MLFLOW_S3_ENDPOINT_URL")
            lines += [
                f"                   {self.cfg.serving.replicas} replicas sharing the port (SO_REUSEPORT),"
                " each started again by a supervisor when it dies",
                f"  workers          work pool '{WORK_POOL}' (process) x 2",
                f"  MLflow           {self.cfg.tracking_uri}   (PostgreSQL; artifacts {self.cfg.artifact_root})",
                "  Prefect database PostgreSQL",
                f"  PostgreSQL data  {self._postgres_data}",
                f"  lake             {self.cfg.lake.root}   (S3 store {s3})",
                f"  for a shell      source {self.run_dir / 'production.env'}",
            ]
        else:
            lines.append(f"  worker           work pool '{WORK_POOL}' (process)")
        lines.append(
            f"  unresponsive runs marked Crashed after {unresponsive_after()} s without a heartbeat"
            f" (automation '{UNRESPONSIVE_AUTOMATION}')"
        )
        if watching:
            lines.append(f"  landing watcher  {self.cfg.landing.path} -> {LANDING_EVENT}")
        lines.append(f"  logs             {self.run_dir}/*.log")
        if production:
            lines.append(f"                   {Path(self.cfg.home) / 'production' / 'run'}/*.log (the stores' servers)")
        lines += ["", "Deployments:"]
        for d in self.deployments():
            lines.append(f"  {d['flow_name']}/{d['name']}")
            for s in d.get("schedules") or []:
                nxt = self.next_run(d["id"])
                lines.append(f"      {describe_schedule(s['schedule'])}" + (f"; next run {nxt}" if nxt else ""))
            for a in d["automations"]:
                lines.append(f"      {describe_trigger(a['trigger'])}")
        for entrypoint in skipped:
            lines.append(f"  not deployed: {entrypoint} (no such file in this checkout yet)")
        lines += ["", "Stop everything with: selfheal down"]
        return "\n".join(lines)

    # -- down --------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop what ``up`` started, newest first; returns the services that were running."""
        stopped: list[str] = []
        for name in reversed(_ALL_SERVICES):
            path = self.run_dir / f"{name}.pid"
            pid = PidFile.read(path)
            if pid is not None:
                # A dead leader's pid is not reused while its group lives on: its members are still ours.
                targets = processes.process_tree(pid.pid) if pid.running() else processes.process_group(pid.pid)
                if targets:
                    if name == "postgres" and pid.running():
                        # SIGINT is its fast shutdown (SIGTERM's "smart" one waits for every client).
                        processes.kill([pid.pid], signal.SIGINT, timeout=_STOP_GRACE_SECONDS)
                    terminate(targets)
                    stopped.append(name)
                    logger.info("stopped %s (pid %d)", name, pid.pid)
            path.unlink(missing_ok=True)
        state = self.run_dir / _PRODUCTION_STATE
        if state.exists():
            recorded = json.loads(state.read_text())
            for folder in recorded.get("remove", []):
                shutil.rmtree(folder, ignore_errors=True)
            # Both point at stores that are stopped now: a shell that sourced production.env
            # gets "no such config file" rather than a config on dead ports.
            (self.run_dir / "production.env").unlink(missing_ok=True)
            if recorded.get("config"):
                Path(recorded["config"]).unlink(missing_ok=True)
            state.unlink()
        return stopped


def heartbeat_seconds() -> int:
    """The workers' flow-run heartbeat: the environment's ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (or its
    legacy name), else ``HEARTBEAT_SECONDS``."""
    chosen = os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") or os.environ.get("PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    return int(chosen) if chosen else HEARTBEAT_SECONDS


def unresponsive_after() -> int:
    """Seconds without a heartbeat after which a worker's run is marked Crashed: ``heartbeat_seconds()``
    times the environment's ``SELFHEAL_MISSED_HEARTBEATS``, else ``MISSED_HEARTBEATS``.

    Raises:
        SelfhealError: ``SELFHEAL_MISSED_HEARTBEATS`` is not a whole number of at least 2.
    """
    chosen = os.environ.get("SELFHEAL_MISSED_HEARTBEATS")
    if not chosen:
        return heartbeat_seconds() * MISSED_HEARTBEATS
    missed = int(chosen) if chosen.strip().isdigit() else 0
    if missed < 2:
        raise SelfhealError(
            f"SELFHEAL_MISSED_HEARTBEATS={chosen!r}: a whole number of at least 2"
            " (a live run whose heartbeat comes late must not be marked Crashed)"
        )
    return heartbeat_seconds() * missed


def local_deployments(prefect_file: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """The deployments of ``prefect_file`` that target the ``local`` work pool."""
    spec = yaml.safe_load(prefect_file.read_text())
    return [d for d in spec.get("deployments", []) if (d.get("work_pool") or {}).get("name") == WORK_POOL]


def describe_schedule(schedule: Mapping[str, Any]) -> str:
    """One line for a Prefect schedule: ``every 60s``, ``cron 0 3 * * 1 (Europe/Berlin)``."""
    if "cron" in schedule:
        return f"cron {schedule['cron']} ({schedule.get('timezone') or 'UTC'})"
    if "interval" in schedule:
        seconds = float(schedule["interval"])
        return f"every {seconds / 3600:g}h" if seconds >= 3600 and seconds % 3600 == 0 else f"every {seconds:g}s"
    return f"rrule {schedule.get('rrule')}"


def describe_trigger(trigger: Mapping[str, Any]) -> str:
    """One line for an event trigger: ``on event selfheal.signal.* (selfheal.severity=warning|critical)``."""
    expect = ", ".join(sorted(trigger.get("expect") or [])) or "any event"
    labels = [
        f"{key}={'|'.join(value) if isinstance(value, list) else value}"
        for key, value in (trigger.get("match") or {}).items()
        if key != "prefect.resource.id"
    ]
    return f"on event {expect}" + (f" ({', '.join(labels)})" if labels else "")


# -- the landing watcher -----------------------------------------------------------------------
@dataclass
class LandingWatcher:
    """Emits ``selfheal.landing.file.created`` once per landed file, after its size settles.

    A file is announced when two polls in a row see the same size and mtime (a file
    still being written is not announced half-way); what was announced is kept in
    ``state_file`` so a restart does not announce it again.
    """

    landing: Path
    state_file: Path
    announced: dict[str, str] = field(default_factory=dict)
    _pending: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.announced = dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            self.announced = {}

    def poll(self) -> list[Path]:
        """Files that became complete since the last poll (and are now counted as announced)."""
        ready: list[Path] = []
        seen: dict[str, str] = {}
        for path in sorted(self.landing.iterdir()) if self.landing.is_dir() else []:
            if not path.is_file() or path.name.startswith("."):
                continue
            stat = path.stat()
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
            seen[path.name] = signature
            if self.announced.get(path.name) != signature and self._pending.get(path.name) == signature:
                ready.append(path)
        self._pending = seen
        return ready

    def forget_pending(self) -> None:
        """Wait for two more polls before announcing what is pending (after a failed emit)."""
        self._pending.clear()

    def mark(self, files: list[Path]) -> None:
        for path in files:
            self.announced[path.name] = self._pending[path.name]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.announced))
        tmp.replace(self.state_file)


async def emit_landing_events(files: list[Path]) -> None:
    """One Prefect event per file, sent before returning."""

    async with get_events_client() as client:
        for path in files:
            stat = path.stat()
            await client.emit(
                Event(
                    event=LANDING_EVENT,
                    resource=Resource.model_validate(
                        {
                            "prefect.resource.id": f"{LANDING_RESOURCE_PREFIX}{path.name}",
                            "prefect.resource.name": path.name,
                            "selfheal.landing.path": str(path),
                        }
                    ),
                    payload={"size": stat.st_size, "mtime": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()},
                )
            )


def watch_landing(landing: Path, state_file: Path, interval: float = 2.0, max_polls: int | None = None) -> None:
    """Poll ``landing`` every ``interval`` seconds and announce new files (until killed or ``max_polls``)."""
    watcher = LandingWatcher(landing, state_file)
    polls = 0
    while max_polls is None or polls < max_polls:
        files = watcher.poll()
        if files:
            try:
                asyncio.run(emit_landing_events(files))
                watcher.mark(files)
                logger.info("announced %s", ", ".join(p.name for p in files))
            except Exception as exc:  # the server may be restarting: retry on the next poll
                logger.warning("could not emit landing events (%s); retrying", exc)
                watcher.forget_pending()
        polls += 1
        time.sleep(interval)
