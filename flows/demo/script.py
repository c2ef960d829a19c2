"""``selfheal demo``: the whole loop on generated card-fraud data, with real faults.

It trains and serves a champion, sends live traffic with late labels, runs the
healer, and plays a script of faults against the running system: concept drift,
covariate drift, a corrupt batch, a bad model promoted, a serving worker and
then one of the two model servers killed, and the tracking store unreachable for
a while. For each it waits until the healer has detected, repaired and *verified*
the repair, and prints the time to recover. Every number is measured in this run.

MTTR here is from detection to verified repair (the healer's clock); the
detection delay (from injection to detection) is printed beside it. The killed
worker and server are replaced without the healer (their master, the supervisor):
their MTTR is from the kill to every server ready again, with the availability
over that time. (Killing every server at once, which only the healer repairs, is
the chaos suite's ``serving-kill-server``.)

Two profiles: ``embedded`` (the default: SQLite for MLflow, the lake in a folder, Prefect's
ephemeral server) and ``production`` (``flows.local.production``: MLflow and Prefect servers
on PostgreSQL, the lake and MLflow's artifacts on an S3 store, all started in the scratch
folder). The script is the same; in ``production`` the tracking-store outage is the MLflow
server frozen (SIGSTOP), as a SQLite file cannot be locked there, and one fault is added:
PostgreSQL stopped and started again 40 s later.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from chaos.registry.actions import make_tracking_store_unreachable, promote_bad_model
from chaos.serving.actions import kill_replica, kill_worker
from chaos.serving.probes import seconds_until_servers_ready
from chaos.workload import read_outcomes
from checkpoints.decisions import DecisionLog
from checkpoints.exceptions import ServingUnavailable
from checkpoints.incidents import State
from flows.config import DataConfig, SelfhealConfig, load_config
from flows.demo.data import ID_COLUMN, TARGET, TIME_COLUMN, encode, generate_batch, write_batches
from flows.healer.machine import HealerLoop, make_context
from flows.healer.policy import PolicyTable
from flows.healer.remedies import start_server, stop_server
from flows.local.production import ProductionStores
from flows.pipeline.flow import pipeline_flow
from serving import processes

#: Monitor settings for a demo that must finish in minutes: small windows, short lag.
DEMO_THRESHOLDS: dict[str, Any] = {
    "min_window_rows": 300,
    "ingest_lag_seconds": 2.0,
    "prediction_reference_rows": 300,
    "freshness_seconds": {},
    # The demo's traffic is bursty (one machine runs the server, the clients and the
    # retraining): only a feed that halves counts as missing rows here.
    "missing_rows_tolerance": 0.5,
}
WINDOW_BATCHES = 3
BATCH_ROWS_WORLD = 4000
PROFILES = ("embedded", "production")
#: How long the tracking store stays unreachable. Long enough for a tick to see it: a tick
#: already inside an MLflow call waits out SQLite's 20 s busy timeout before it can notice.
OUTAGE_SECONDS = 40.0
#: After the last fault, how long the healer may go on closing what is still open (an incident a
#: fault's side effect opened just before the end, a latency alarm while the store was down) before
#: the report: what is open then is reported as not resolved.
SETTLE_SECONDS = 60.0


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


def demo_config(
    base: SelfhealConfig,
    workdir: Path,
    port: int,
    stores: dict[str, Any] | None = None,
    policy_mode: str = "rules",
) -> Path:
    """The user's (or default) settings with every path in ``workdir`` and demo-speed knobs.

    ``stores`` (``ProductionStores.settings()``) replaces the embedded tracking store,
    artifact root and lake; ``policy_mode`` is the healer's ``healing.policy_mode``.
    """
    data = base.model_dump(mode="json", by_alias=True, exclude={"source_path"})
    data.update(
        home=str(workdir),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        lake={"root": str(workdir / "lake"), "storage_options": {}},
        # The demo's generator writes every batch under a hidden name and renames it: a file
        # in the landing zone is finished, so it is taken at once (no settle time).
        landing={
            **data["landing"],
            "path": str(workdir / "landing"),
            "fallback": str(workdir / "fallback"),
            "settle_seconds": 0.0,
        },
        thresholds={**DEMO_THRESHOLDS, **data.get("thresholds", {})},
    )
    # The demo always runs the generated stream, whatever the folder's data section says:
    # its label, its event time, and its transaction id, which is a join key and never a
    # feature (as a feature every id is an unseen category: the model learned nothing from
    # it and the monitor reported new categories at every pass). No schema or expectations
    # of another dataset.
    stream = DataConfig(target=TARGET, task="binary", time_column=TIME_COLUMN, id_columns=[ID_COLUMN])
    data["data"] = stream.model_dump(mode="json", by_alias=True)
    data.update(stores or {})
    data["serving"].update(port=port, url=f"http://127.0.0.1:{port}", workers=1, replicas=2, poll_seconds=2.0)
    data["trainer"]["window_batches"] = WINDOW_BATCHES
    data["trainer"]["params"] = {**data["trainer"].get("params", {}), "max_iter": 60}
    data["healing"].update(
        interval_seconds=1.0, verify_timeout_seconds=60.0, retrain_window=None, policy_mode=policy_mode
    )
    path = workdir / "selfheal.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class FaultResult:
    """One scripted fault and what the healer did about it."""

    fault: str
    expected_cause: str | None
    injected_at: str
    outcome: str
    incident_id: str | None = None
    cause: str | None = None
    remedies: list[str] = field(default_factory=list)
    detection_delay_seconds: float | None = None
    mttr_seconds: float | None = None
    quality_before: str | None = None
    quality_after: str | None = None
    note: str = ""


class World:
    """What the clients send: a batch file the workload re-reads when it changes."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.path = workdir / "world.parquet"
        self.seed = seed
        self.drift = "none"
        self.index = 10_000

    def become(self, drift: str) -> None:

        self.drift, self.index = drift, self.index + 1
        raw = encode(generate_batch(self.index, BATCH_ROWS_WORLD, self.seed, drift=drift), "parquet")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.replace(self.path)


class Demo:
    """The running system and the script played against it."""

    def __init__(
        self,
        workdir: Path,
        batches: int,
        rows: int,
        seed: int,
        profile: str = "embedded",
        policy_table: PolicyTable | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        self.workdir, self.batches, self.rows, self.seed = workdir, batches, rows, seed
        self.profile = profile
        self.stores: ProductionStores | None = None
        self.next_batch = 0
        self.results: list[FaultResult] = []
        self.traffic: subprocess.Popen[bytes] | None = None
        self.services = contextlib.ExitStack()
        self.others: list[dict[str, Any]] = []
        self.chosen: list[dict[str, Any]] = []
        self.policy_table = policy_table
        """A learned policy (``--policy learned``): the demo's healer chooses with it."""

    def run(self) -> dict[str, Any]:
        """Play the script on the profile's stores; return the report (faults, availability, duration).

        With a ``policy_table`` the healer runs in ``healing.policy_mode: learned`` with it, and
        the report lists which remedy choices it made.
        """
        started = time.perf_counter()
        try:
            self.setup()
            self.play()
            self.collect_other_incidents()
            self.chosen = self.choices()  # the decisions log too is on the store the teardown stops
        finally:
            self.teardown()
        report = self.report(started)
        report["policy"] = "learned" if self.policy_table is not None else "rules"
        _table(report)
        return report

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:

        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        os.environ.setdefault("SELFHEAL_ADMIN_TOKEN", secrets.token_urlsafe(32))
        os.environ.setdefault("SELFHEAL_LOG_FLUSH_SECONDS", "1")
        if self.profile == "production":
            self.start_stores()
        settings = self.stores.settings() if self.stores else None
        mode = "learned" if self.policy_table is not None else "rules"
        self.config_path = demo_config(load_config(), self.workdir, processes.free_port(), settings, mode)
        self.cfg = load_config(self.config_path)
        if self.policy_table is not None:
            self.policy_table.save(make_context(self.cfg, str(self.config_path)).lake)
        _say(f"selfheal demo: scratch folder {self.workdir}")
        self.land(self.batches, drift="none")
        started = time.perf_counter()
        result = pipeline_flow(str(self.config_path))
        _say(f"   pipeline: {result.outcome} in {time.perf_counter() - started:.1f} s: {result.message}")
        self.world = World(self.workdir, self.seed)
        self.world.become("none")
        self.start_server()
        self.start_traffic()
        self.loop = HealerLoop(self.cfg, str(self.config_path))

    def start_stores(self) -> None:
        """PostgreSQL, the S3 store, and MLflow's and Prefect's servers on them; this process uses them."""
        from prefect.settings import PREFECT_API_URL, temporary_settings  # why local: Prefect is loaded by now

        _say("   starting PostgreSQL, SeaweedFS (S3), an MLflow server and a Prefect server on them ...")
        started = time.perf_counter()
        self.stores = self.services.enter_context(ProductionStores(self.workdir))
        os.environ.update(self.stores.environment())  # boto3 (MLflow's S3 artifacts), here and in the model server
        self.services.enter_context(temporary_settings(updates={PREFECT_API_URL: self.stores.prefect_api_url}))
        _say(
            f"   stores up in {time.perf_counter() - started:.1f} s: MLflow {self.stores.tracking_uri} (PostgreSQL), "
            f"Prefect {self.stores.prefect_api_url} (PostgreSQL), lake {self.stores.lake_root}, "
            f"artifacts {self.stores.artifact_root}"
        )

    def land(self, count: int, drift: str, fault: str = "none", fallback: bool = False) -> list[Path]:

        paths = write_batches(
            self.cfg.landing.path,
            batches=count,
            rows=self.rows,
            seed=self.seed,
            drift=drift,
            fault=fault,
            start=self.next_batch,
        )
        if fallback:
            write_batches(
                self.workdir / "fallback",
                batches=count,
                rows=self.rows,
                seed=self.seed,
                drift=drift,
                start=self.next_batch,
            )
        self.next_batch += count
        _say(
            f"   landed {count} batch(es) ({drift if drift != 'none' else 'clean'}"
            f"{', fault ' + fault if fault != 'none' else ''})"
        )
        return paths

    def start_server(self) -> None:

        pid = start_server(self.cfg, str(self.config_path))
        started = time.perf_counter()
        try:
            self.loop_ctx().server.wait_ready(timeout=120)
        except ServingUnavailable as exc:
            raise RuntimeError(f"the model server did not become ready; see {self.workdir / 'run'}") from exc
        _say(f"   model server ready at {self.cfg.serving.url} (pid {pid}) in {time.perf_counter() - started:.1f} s")

    def loop_ctx(self) -> Any:

        return make_context(self.cfg, str(self.config_path))

    def start_traffic(self) -> None:
        """The clients, in a process of their own: the demo's own work (training, a bad model) never slows them."""
        self.traffic_log = self.workdir / "traffic.jsonl"
        argv = [sys.executable, "-m", "chaos.workload", "--url", str(self.cfg.serving.url)]
        argv += ["--source", str(self.world.path), "--log", str(self.traffic_log), "--target", self.cfg.data.target]
        argv += ["--rate", "80", "--threads", "4"]
        with (self.workdir / "run" / "traffic.log").open("ab") as log:
            self.traffic = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        processes.wait_until(self.traffic_log.exists, 60, f"the first request (log {log.name})", interval=0.2)
        _say(f"   traffic: 80 requests/s with their labels posted as feedback (pid {self.traffic.pid})")

    # -- the script ---------------------------------------------------------------------------
    def champion_quality(self) -> str:
        record = self.loop.ctx.registry.by_alias("champion")
        if record is None:
            return "-"
        metric = self.cfg.gate_metric
        return f"v{record.version} {metric}={float(record.tags.get(f'metric.{metric}', 'nan')):.3f}"

    def heal_until(self, fault: str, cause: str | None, injected: datetime, timeout: float = 150.0) -> FaultResult:
        """Tick the healer until an incident of ``cause`` opened after ``injected`` closes."""

        before = self.quality_before  # read before the fault: a locked store would block here
        found = None

        def closed() -> bool:
            nonlocal found
            self.loop.tick()
            fresh = [i for i in self.loop.healer.log.incidents() if i.detected_at >= injected and i.cause == cause]
            found = fresh[-1] if fresh else None
            return found is not None and found.state.closed

        with contextlib.suppress(TimeoutError):  # reported below as "not detected" or "still <state>"
            processes.wait_until(closed, timeout, f"a {cause} incident to close", self.cfg.healing.interval_seconds)
        result = FaultResult(fault, cause, injected.isoformat(), "not detected", quality_before=before)
        if found is not None:
            result.incident_id, result.cause = found.id, found.cause
            result.remedies = found.remedies_tried
            result.detection_delay_seconds = (found.detected_at - injected).total_seconds()
            result.mttr_seconds = found.mttr_seconds
            result.outcome = found.state.value if found.state.closed else f"still {found.state.value}"
            result.note = found.last.detail
        result.quality_after = self.champion_quality()
        if found is not None and found.state == State.RESOLVED:
            _say(
                f"   RESOLVED {found.cause} by {', '.join(found.remedies_tried)}: detected "
                f"{result.detection_delay_seconds:.1f} s after injection, MTTR {found.mttr_seconds:.1f} s"
            )
        else:
            _say(f"   NOT RESOLVED: {result.outcome}: {result.note[:160]}")
        self.results.append(result)
        return result

    def step(self, title: str) -> datetime:
        _say(f"\n== {len(self.results) + 1}. {title}")
        self.quality_before = self.champion_quality()
        return datetime.now(UTC)

    def play(self) -> None:
        """The script: each fault in turn, healed (or absorbed) before the next one goes in."""
        self.steady_state()
        self._data_faults()
        self._bad_model()
        self._processes_killed()
        self._outages()
        self.settle()

    def settle(self) -> None:
        """Tick the healer until no incident is open (at most ``SETTLE_SECONDS``), as on-call would wait."""
        still = [i for i in self.loop.healer.log.incidents() if not i.state.closed]
        if not still:
            return
        _say(f"\n== waiting for {len(still)} incident(s) still open to close: {', '.join(i.cause for i in still)}")

        def closed() -> bool:
            return not self.loop.tick()

        with contextlib.suppress(TimeoutError):  # what is still open is reported as not resolved
            interval = self.cfg.healing.interval_seconds
            processes.wait_until(closed, SETTLE_SECONDS, "the open incidents to close", interval)

    def _data_faults(self) -> None:
        """Concept drift, covariate drift, then a corrupt batch with a clean copy in the fallback source."""

        at = self.step("concept drift: same inputs, fraud follows a new pattern (labels arrive late)")
        self.world.become("concept:1")
        self.land(WINDOW_BATCHES, drift="concept:1")
        self.heal_until("concept drift", "concept_drift", at)

        at = self.step("covariate drift: a new payment gateway shifts amounts and categories")
        self.world.become("covariate:2")
        self.land(WINDOW_BATCHES, drift="covariate:2")
        self.heal_until("covariate drift", "data_drift", at)

        at = self.step("a corrupt batch lands (truncated file); the fallback source has a clean copy")
        self.land(1, drift=self.world.drift, fault="truncated", fallback=True)
        pipeline_flow(str(self.config_path))  # the landing trigger's pipeline run
        self.heal_until("corrupt batch", "data_quality", at)

    def _bad_model(self) -> None:

        at = self.step("a bad model is promoted (it learned inverted labels)")
        promote_bad_model(
            self.cfg.tracking_uri,
            self.cfg.model_name,
            self.cfg.lake.root,
            self.cfg.data.target,
            seed=self.seed,
            server_url=str(self.cfg.serving.url),
            storage_options=self.cfg.lake.storage_options or None,
        )
        self.heal_until("bad model promoted", "bad_deploy", at)

    def _processes_killed(self) -> None:
        """A killed worker is its master's to replace, a killed server (master) its supervisor's: no incident."""

        url, replicas = str(self.cfg.serving.url), self.cfg.serving.replicas
        at = self.step("one serving worker killed (SIGKILL) under load")
        killed = kill_worker(url)
        back = time.time() - killed["at"]
        back += seconds_until_servers_ready(url, replicas, since="now")  # its master's new worker answers too
        time.sleep(max(0.0, 8.0 - back))
        self._absorbed("serving worker killed", at, f"worker {killed['pid']} replaced by its master", back)

        at = self.step(f"one of the {replicas} model servers killed (SIGKILL: master and worker)")
        killed = kill_replica(url)
        back = time.time() - killed["at"]
        back += seconds_until_servers_ready(url, replicas, since="now")
        time.sleep(max(0.0, 8.0 - back))
        self._absorbed("model server killed", at, f"server {killed['master']} started again by the supervisor", back)

    def _absorbed(self, fault: str, at: datetime, what: str, recovered_after: float) -> None:
        """Record a fault the serving processes recover from on their own: availability from ``at``, incidents."""
        self.loop.tick()
        window = time.time() - at.timestamp()
        availability = self.availability(at.timestamp(), time.time())
        opened = [i for i in self.loop.healer.log.incidents() if i.detected_at >= at]
        note = f"{what} after {recovered_after:.1f} s; availability {availability:.2%} over {window:.0f} s"
        result = FaultResult(
            fault,
            None,
            at.isoformat(),
            "absorbed" if not opened else "incident",
            mttr_seconds=round(recovered_after, 1),
            note=note,
            quality_before=self.champion_quality(),
            quality_after=self.champion_quality(),
        )
        self.results.append(result)
        _say(f"   {note}; incidents opened: {len(opened)}")

    def _outages(self) -> None:
        """The tracking store unreachable (the production profile: the MLflow server hung, its database stopped)."""

        if self.stores is None:
            at = self.step(f"the tracking store stops answering for {OUTAGE_SECONDS:g} s")
            make_tracking_store_unreachable(self.cfg.tracking_uri, duration=OUTAGE_SECONDS)
            self.heal_until("tracking store unreachable", "upstream_outage", at)
            return
        at = self.step(f"the MLflow server hangs (SIGSTOP) for {OUTAGE_SECONDS:g} s")
        self.stores.hang_tracking_server(OUTAGE_SECONDS)
        self.heal_until("tracking store unreachable", "upstream_outage", at)
        at = self.step(
            f"PostgreSQL (MLflow's and Prefect's database) stopped, started again {OUTAGE_SECONDS:g} s later"
        )
        self.stores.stop_postgres(OUTAGE_SECONDS)
        self.heal_until("database restarted", "upstream_outage", at)

    def steady_state(self, timeout: float = 90.0) -> None:
        """Let the monitor see the healthy system (quality on labels) before any fault."""
        _say("\n== steady state: the healer watches the healthy system")
        started = time.monotonic()
        passes = 0
        while time.monotonic() - started < timeout:
            self.loop.tick()
            passes += 1
            promoted = self.loop.ctx.registry.promoted_at()
            if promoted is not None and self.loop.healer.healthy_since(promoted):
                break
            time.sleep(self.cfg.healing.interval_seconds)
        opened = len(self.loop.healer.log.incidents())
        _say(
            f"   {passes} monitor pass(es) in {time.monotonic() - started:.0f} s: quality on live labels at baseline; "
            f"{opened} incident(s)"
        )

    def availability(self, start: float, end: float) -> float:

        outcomes = read_outcomes(self.traffic_log, start, end)
        return sum(o.ok for o in outcomes) / len(outcomes) if outcomes else 0.0

    def teardown(self) -> None:

        if self.traffic is not None:
            processes.stop([self.traffic.pid], grace=10)  # SIGTERM: it finishes its requests and closes its log
            self.traffic.wait(10)
        if hasattr(self, "cfg"):
            stop_server(self.cfg)
        self.services.close()

    def collect_other_incidents(self) -> None:
        """Keep the incidents no scripted fault's result names (a side effect or a false alarm) for the report.

        Read before the teardown: in the production profile the incident log is on the S3 store it stops.
        """
        named = {r.incident_id for r in self.results}
        faults = [(datetime.fromisoformat(r.injected_at), r.fault) for r in self.results]
        found: list[dict[str, Any]] = []
        for incident in self.loop.healer.log.incidents():
            if incident.id in named:
                continue
            during = [fault for at, fault in faults if at <= incident.detected_at]
            found.append(
                {
                    "incident_id": incident.id,
                    "cause": incident.cause,
                    "outcome": incident.state.value,
                    "remedies": incident.remedies_tried,
                    "mttr_seconds": incident.mttr_seconds,
                    "during": during[-1] if during else "steady state",
                }
            )
        self.others = found

    def report(self, started: float) -> dict[str, Any]:

        outcomes = read_outcomes(self.traffic_log) if hasattr(self, "traffic_log") else []
        served = [o for o in outcomes if o.ok]
        return {
            "profile": self.profile,
            "faults": [asdict(r) for r in self.results],
            "other_incidents": self.others,
            "requests": len(outcomes),
            "availability": len(served) / len(outcomes) if outcomes else None,
            "fallback_share": sum(o.served_by != "primary" for o in served) / len(served) if served else None,
            "seconds": time.perf_counter() - started,
            "choices": self.chosen,
        }

    def choices(self) -> list[dict[str, Any]]:
        """Every remedy the healer chose, by whom (rules, learned, person) and why."""
        if not hasattr(self, "cfg"):
            return []
        log = DecisionLog(make_context(self.cfg, str(self.config_path)).lake)
        return [
            {"cause": d.cause, "remedy": d.chosen, "chooser": d.chooser, "why": d.note, "outcome": d.outcome}
            for d in log.decisions("remedy")
        ]


def _table(report: dict[str, Any]) -> None:
    _say("\n== incidents")
    _say(
        f"{'fault':<28} {'cause':<16} {'remedy':<22} {'outcome':<10} {'detect':>7} {'MTTR':>7}  quality before -> after"
    )
    for r in report["faults"]:
        detect = f"{r['detection_delay_seconds']:.1f}s" if r["detection_delay_seconds"] is not None else "-"
        mttr = f"{r['mttr_seconds']:.1f}s" if r["mttr_seconds"] is not None else "-"
        remedy = ", ".join(r["remedies"]) or "-"
        _say(
            f"{r['fault']:<28} {r['cause'] or '-':<16} {remedy:<22} {r['outcome']:<10} {detect:>7} {mttr:>7}  "
            f"{r['quality_before']} -> {r['quality_after']}"
        )
    for other in report["other_incidents"]:
        mttr = f", MTTR {other['mttr_seconds']:.1f} s" if other["mttr_seconds"] is not None else ""
        _say(
            f"also opened during {other['during']!r}: {other['cause']} {other['outcome']} "
            f"by {', '.join(other['remedies']) or '-'}{mttr} (not the fault's own incident)"
        )
    learned = [c for c in report["choices"] if c["chooser"] == "learned"]
    if report.get("policy") == "learned":
        _say(f"\n== remedy choices ({len(learned)} of {len(report['choices'])} by the learned policy)")
        for c in report["choices"]:
            _say(f"{c['cause']:<16} {c['remedy']:<22} {c['chooser']:<8} {c['outcome']:<10} {c['why']}")
    if report["availability"] is not None:
        _say(
            f"\ntraffic: {report['requests']:,} requests, availability {report['availability']:.2%} "
            f"(fallback answers {report['fallback_share']:.2%} of them); demo took {report['seconds']:.0f} s"
        )
