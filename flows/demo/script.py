"""``selfheal demo``: the whole loop on generated card-fraud data, with real faults.

It trains and serves a champion, sends live traffic with late labels, runs the
healer, and plays a script of faults against the running system: concept drift,
covariate drift, a corrupt batch, a bad model promoted, a serving worker and
then the whole server killed, and the tracking store unreachable for a while.
For each it waits until the healer has detected, repaired and *verified* the
repair, and prints the time to recover. Every number is measured in this run.

MTTR here is from detection to verified repair (the healer's clock); the
detection delay (from injection to detection) is printed beside it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from chaos.registry.actions import make_tracking_store_unreachable, promote_bad_model
from chaos.serving.actions import kill_server, kill_worker
from chaos.workload import RecordSource, TrafficLog, Workload, feature_names, read_outcomes
from checkpoints.exceptions import ServingUnavailable
from checkpoints.incidents import State
from flows.config import SelfhealConfig, load_config
from flows.demo.data import encode, generate_batch, write_batches
from flows.healer.machine import HealerLoop, make_context
from flows.healer.remedies import start_server, stop_server
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


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


def demo_config(base: SelfhealConfig, workdir: Path, port: int) -> Path:
    """The user's (or default) settings with every path in ``workdir`` and demo-speed knobs."""
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
    data["serving"].update(port=port, url=f"http://127.0.0.1:{port}", workers=2, poll_seconds=2.0)
    data["trainer"]["window_batches"] = WINDOW_BATCHES
    data["trainer"]["params"] = {**data["trainer"].get("params", {}), "max_iter": 60}
    data["healing"].update(interval_seconds=1.0, verify_timeout_seconds=60.0, retrain_window=None)
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

    def __init__(self, workdir: Path, batches: int, rows: int, seed: int) -> None:
        self.workdir, self.batches, self.rows, self.seed = workdir, batches, rows, seed
        self.next_batch = 0
        self.results: list[FaultResult] = []
        self.stop = threading.Event()

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:

        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        os.environ.setdefault("SELFHEAL_ADMIN_TOKEN", secrets.token_urlsafe(32))
        os.environ.setdefault("SELFHEAL_LOG_FLUSH_SECONDS", "1")
        self.config_path = demo_config(load_config(), self.workdir, processes.free_port())
        self.cfg = load_config(self.config_path)
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

        url = str(self.cfg.serving.url)
        source = RecordSource(self.world.path, feature_names(url), self.cfg.data.target)
        self.traffic_log = self.workdir / "traffic.jsonl"
        self.workload = Workload(url, source, TrafficLog(self.traffic_log), rate=80.0, threads=4, stop=self.stop)
        self.traffic = threading.Thread(target=self.workload.run, name="traffic", daemon=True)
        self.traffic.start()
        _say("   traffic: 80 requests/s with their labels posted as feedback")

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
        self._worker_killed()
        self._outages()

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
        )
        self.heal_until("bad model promoted", "bad_deploy", at)

    def _worker_killed(self) -> None:
        """A killed worker is the process manager's to replace: no incident expected; availability measured."""

        at = self.step("one serving worker killed (SIGKILL) under load")
        window_start = time.time()
        killed = kill_worker(str(self.cfg.serving.url))
        time.sleep(8.0)
        self.loop.tick()
        availability = self.availability(window_start, time.time())
        opened = [i for i in self.loop.healer.log.incidents() if i.detected_at >= at]
        note = f"worker {killed['pid']} replaced by the process manager; availability {availability:.2%} over 8 s"
        result = FaultResult(
            "serving worker killed",
            None,
            at.isoformat(),
            "absorbed" if not opened else "incident",
            note=note,
            quality_before=self.champion_quality(),
            quality_after=self.champion_quality(),
        )
        self.results.append(result)
        _say(f"   {note}; incidents opened: {len(opened)}")

    def _outages(self) -> None:
        """The whole server killed, then the tracking store unreachable."""

        at = self.step("the whole model server killed (SIGKILL)")
        kill_server(str(self.cfg.serving.url))
        self.heal_until("server killed", "serving_down", at)

        # Long enough for a tick to see it: a tick already inside an MLflow call waits out
        # SQLite's 20 s busy timeout before it can notice anything.
        at = self.step("the tracking store stops answering for 40 s")
        make_tracking_store_unreachable(self.cfg.tracking_uri, duration=40.0)
        self.heal_until("tracking store unreachable", "upstream_outage", at)

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

        self.stop.set()
        if hasattr(self, "traffic"):
            self.traffic.join(10)
        if hasattr(self, "cfg"):
            stop_server(self.cfg)

    def report(self, started: float) -> dict[str, Any]:

        outcomes = read_outcomes(self.traffic_log) if hasattr(self, "traffic_log") else []
        served = [o for o in outcomes if o.ok]
        return {
            "faults": [asdict(r) for r in self.results],
            "requests": len(outcomes),
            "availability": len(served) / len(outcomes) if outcomes else None,
            "fallback_share": sum(o.served_by != "primary" for o in served) / len(served) if served else None,
            "seconds": time.perf_counter() - started,
        }


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
    if report["availability"] is not None:
        _say(
            f"\ntraffic: {report['requests']:,} requests, availability {report['availability']:.2%} "
            f"(fallback answers {report['fallback_share']:.2%} of them); demo took {report['seconds']:.0f} s"
        )


def run_demo(workdir: Path, batches: int, rows: int, seed: int) -> dict[str, Any]:
    """Play the script; return the report (faults, availability, duration)."""
    started = time.perf_counter()
    demo = Demo(workdir, batches, rows, seed)
    try:
        demo.setup()
        demo.play()
    finally:
        demo.teardown()
    report = demo.report(started)
    _table(report)
    return report
