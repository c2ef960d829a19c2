"""Serving probes: does it answer, how available was it, is the model good, were predictions logged.

The ``seconds_until_*`` probes poll until their condition holds and return the seconds
it took, counted from the fault recorded in this run (``since="fault"``), from when it
was undone (``since="restore"``) or from the probe's start (``since="now"``); after
``timeout`` seconds from that moment they raise ``ActivityFailed`` with what they saw
last. ``availability`` and ``predictions_lost`` return a number for a tolerance to check.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import contextlib
import threading
import time
from typing import Any

import httpx
import pandas as pd
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos._polling import Check, seconds_until
from chaos.serving import _server
from chaos.workload import read_outcomes, read_records
from checkpoints import Lake
from checkpoints.exceptions import ServingUnavailable
from serving import processes
from serving.client import ServingClient
from serving.modelio import mlflow_uris
from serving.registry import ModelRegistry

__all__ = [
    "availability",
    "availability_during_fault",
    "predictions_lost",
    "seconds_until_availability",
    "seconds_until_model_quality",
    "seconds_until_servers_ready",
    "seconds_until_serving_answers",
    "seconds_until_worker_replaced",
    "seconds_until_workers",
]


def seconds_until_serving_answers(
    url: str,
    timeout: float = 60.0,
    payload_file: str | None = None,
    since: str = "fault",
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the server answers /ready with 200 (and, given a payload file, /predict with predictions).

    Returns the seconds it took from the clock start (see ``since``); fails after the timeout.
    """
    body = _server.load_payload(payload_file) if payload_file else None

    def look() -> Check:
        ok, seen = _server.ready(url, timeout=min(2.0, max(0.2, interval * 4)))
        if not ok or body is None:
            return Check(ok, seen)
        answered, seen, _ = _server.predict(url, body, timeout=2.0)
        return Check(answered, seen)

    return seconds_until(look, f"serving answers at {url}", timeout, since, interval, configuration)


def seconds_until_workers(
    url: str,
    workers: int,
    timeout: float = 60.0,
    pid_file: str | None = None,
    since: str = "fault",
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the server's master has the given number of live worker processes (a killed one was replaced).

    Returns the seconds from the clock start; fails after the timeout with the count seen.
    """

    def look() -> Check:
        server = _server.find_server(url, pid_file)
        return Check(len(server.workers) >= workers, f"master {server.master} has workers {list(server.workers)}")

    return seconds_until(look, f"{workers} serving workers", timeout, since, interval, configuration)


def _window_start(configuration: Configuration | None, since: str, window_seconds: float) -> float:
    found = ledger.since_event(configuration, since)
    # No such event in this run (the hypothesis before the method): the trailing window.
    return found if found is not None else time.time() - window_seconds


def availability(
    traffic_log: str,
    window_seconds: float = 10.0,
    since: str = "fault",
    min_requests: int = 20,
    settle_seconds: float = 2.0,
    configuration: Configuration | None = None,
) -> float:
    """The share of the workload's prediction requests answered 200 with predictions, over a window.

    The window is the ``window_seconds`` that follow the fault recorded in this run
    (``since="fault"``), or that follow now when there is none (the hypothesis before
    the method: an earlier experiment's outage is not this one's). The probe waits
    until the window is over, plus ``settle_seconds`` for requests still in flight.
    Fallback answers count. Fails when fewer than ``min_requests`` were sent: no
    traffic proves nothing.
    """
    start = ledger.clock_start(configuration, since)
    end = start + window_seconds
    wait = end + settle_seconds - time.time()
    if wait > 0:
        time.sleep(wait)
    outcomes = read_outcomes(traffic_log, start=start, end=end)
    if len(outcomes) < min_requests:
        raise ActivityFailed(
            f"only {len(outcomes)} requests in {traffic_log} over {window_seconds:g}s (need {min_requests}); "
            "is the workload running?"
        )
    ok = sum(o.ok for o in outcomes)
    return ok / len(outcomes)


#: How long ``availability_during_fault`` watches the steady state before the fault: about 120
#: requests at the sandbox's 40 req/s.
_STEADY_SECONDS = 3.0
#: How long an answer takes to reach the clients' log: a line-buffered append when it comes back.
#: A window is counted by when answers came back, so waiting longer adds nothing to it: a
#: request still in flight at its end answers after it.
_LOG_LAG_SECONDS = 0.25


def _first_request_after(traffic_log: str, since: float, wait: float) -> float:
    """When the first request after ``since`` came back (``since`` when none did within ``wait`` seconds)."""
    deadline = since + wait
    while True:
        seen = read_outcomes(traffic_log, start=since)
        if seen or time.time() >= deadline:
            return min((o.t for o in seen), default=since)
        time.sleep(0.25)


def availability_during_fault(
    traffic_log: str,
    outage_seconds: float = 0.0,
    min_requests: int = 20,
    min_seconds: float = 10.0,
    settle_seconds: float = _LOG_LAG_SECONDS,
    configuration: Configuration | None = None,
) -> float:
    """The share of the clients' requests answered from the fault to now: measured over the whole fault.

    Put it last in the hypothesis after the method: its window then runs from the
    injection through detection, repair and verification (a continuous steady-state
    probe, as Litmus or Chaos Mesh run them), so the outage counts. ``outage_seconds``
    is an ``absorbed`` experiment's declared bounded outage (a link cut for 5 s that the
    experiment restores): requests *sent* in it are left out of the share held here, also
    those whose failure (a connect timeout) came back after it; every request sent after
    it counts (the suite's table still reports availability with all of them). The window is at least
    ``min_seconds`` long, so a fast recovery is still watched for a while. Before the fault (no
    fault in this run yet) the window is the next 3 s. Requests count by when their answer came
    back; the window ends ``settle_seconds`` before the probe reads the log, the time an answer
    takes to reach it. Fails when fewer than ``min_requests`` came back: no traffic proves nothing.
    """
    if outage_seconds < 0:
        raise ValueError(f"outage_seconds must be >= 0, got {outage_seconds}")
    fault = ledger.last_event(configuration, "fault")
    if fault is None:
        # The steady state: the next few seconds, not the last ones (they may hold the
        # previous experiment's outage), from the first answer of clients that may have
        # started with the experiment (their start-up took 5 s on a busy machine).
        start = _first_request_after(traffic_log, time.time(), 30.0)
        time.sleep(max(0.0, start + _STEADY_SECONDS + settle_seconds - time.time()))
        end = start + _STEADY_SECONDS
    else:
        # At least ``min_seconds`` of the fault are observed, however fast the recovery
        # probes before this one were; then the last answers reach the log.
        time.sleep(max(settle_seconds, fault + min_seconds + settle_seconds - time.time()))
        start, end = fault + outage_seconds, time.time() - settle_seconds
    outcomes = read_outcomes(traffic_log, start=start, end=end)
    if fault is not None and outage_seconds:
        outcomes = [o for o in outcomes if o.t - o.ms / 1000 >= start]  # sent after the outage
    if len(outcomes) < min_requests:
        raise ActivityFailed(
            f"only {len(outcomes)} requests in {traffic_log} over {end - start:.0f}s (need {min_requests}); "
            "is the workload running?"
        )
    return sum(o.ok for o in outcomes) / len(outcomes)


def _measure_window(url: str, body: Any, seconds: float, concurrency: int, request_timeout: float) -> tuple[int, int]:
    counts = [0, 0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=request_timeout) as http:
            while time.monotonic() < stop_at:
                try:
                    response = http.post(f"{url.rstrip('/')}/predict", json=body)
                    ok = response.status_code == 200 and bool(response.json().get("predictions"))
                except (httpx.HTTPError, ValueError):
                    ok = False
                    time.sleep(0.05)
                with lock:
                    counts[0] += ok
                    counts[1] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + request_timeout * 2)
    return counts[0], counts[1]


def seconds_until_availability(
    url: str,
    payload_file: str,
    min_availability: float = 0.99,
    window_seconds: float = 3.0,
    timeout: float = 60.0,
    since: str = "fault",
    concurrency: int = 2,
    request_timeout: float = 2.0,
    configuration: Configuration | None = None,
) -> float:
    """Send the payload to /predict in windows of a few seconds until one window's availability is at least the minimum.

    Returns the seconds from the clock start (see ``since``) to the end of that window.
    """
    if not 0.0 <= min_availability <= 1.0:
        raise ValueError(f"min_availability must be in [0, 1], got {min_availability}")
    body = _server.load_payload(payload_file)

    def look() -> Check:
        ok, total = _measure_window(url, body, window_seconds, concurrency, request_timeout)
        share = ok / total if total else 0.0
        return Check(total > 0 and share >= min_availability, f"{ok}/{total} answered ({share:.3f})")

    what = f"availability >= {min_availability} over {window_seconds:g}s at {url}"
    return seconds_until(look, what, timeout, since, 0.1, configuration)


def _served_versions(url: str) -> dict[int, str]:
    """The primary model version each live worker reports in /metrics (pid -> version)."""
    server = _server.find_server(url)
    with ServingClient(url) as client:
        text = client.metrics(timeout=5.0)
    versions: dict[int, str] = {}
    for line in text.splitlines():
        if line.startswith("selfheal_model_version{") and 'role="primary"' in line:
            pid = int(line.split('pid="', 1)[1].split('"', 1)[0])
            value = float(line.rsplit(" ", 1)[1])
            if pid in server.workers and value > 0:
                versions[pid] = str(int(value))
    return versions


class _Scorer:
    """Scores a labeled batch with registered model versions (each loaded once)."""

    def __init__(self, tracking_uri: str, model_name: str, labeled_file: str, target: str, max_rows: int) -> None:
        self.tracking_uri, self.model_name = tracking_uri, model_name
        frame = pd.DataFrame(read_records(labeled_file)[:max_rows])
        if target not in frame:
            raise ValueError(f"{labeled_file} has no {target!r} column")
        self.frame = frame[frame[target].notna()]
        self.labels = self.frame[target].astype("float64").to_numpy()
        if len(set(self.labels)) < 2:
            raise ActivityFailed(f"{labeled_file}: need both classes of {target!r} to score a model")
        self._scores: dict[str, Any] = {}

    def scores(self, version: str) -> Any:
        if version not in self._scores:
            # why local: chaos discovery imports every activity module; mlflow (also under serving.modelio) is slow
            from mlflow.models import get_model_info

            from serving.modelio import load_version

            uri = f"models:/{self.model_name}/{version}"
            # Only versions a worker serves are scored: the server already checked where they live. The
            # loader still reads skops with the reviewed types only.
            registry = ModelRegistry(self.model_name, tracking_uri=self.tracking_uri)
            with mlflow_uris(self.tracking_uri):
                names = list(get_model_info(uri).signature.inputs.input_names())
            model = load_version(registry, registry.version(version))
            frame = self.frame[names]
            if hasattr(model, "predict_proba"):
                self._scores[version] = model.predict_proba(frame)[:, -1]
            else:
                self._scores[version] = model.predict(frame)
        return self._scores[version]

    def quality(self, version: str, metric: str) -> float:
        scores = self.scores(version)
        if metric == "roc_auc":
            from sklearn.metrics import roc_auc_score  # why local: sklearn is slow to import

            return float(roc_auc_score(self.labels, scores))
        if metric == "accuracy":
            return float(((scores >= 0.5) == (self.labels >= 0.5)).mean())
        raise ValueError(f"metric must be 'roc_auc' or 'accuracy', got {metric!r}")


def seconds_until_model_quality(
    url: str,
    tracking_uri: str,
    model_name: str,
    labeled_file: str,
    target: str,
    minimum: float,
    metric: str = "roc_auc",
    timeout: float = 120.0,
    since: str = "fault",
    max_rows: int = 5000,
    interval: float = 1.0,
    configuration: Configuration | None = None,
) -> float:
    """Poll until every live worker serves a model version that scores at least the minimum on a labeled batch.

    The versions come from the server's /metrics (per worker); each is loaded from the
    registry and scored here on the batch (``roc_auc`` or ``accuracy``), so measuring
    sends no traffic the monitor would mistake for clients. Returns the seconds from
    the clock start; fails after the timeout with the last scores.
    """
    scorer = _Scorer(tracking_uri, model_name, labeled_file, target, max_rows)

    def look() -> Check:
        served = _served_versions(url)
        if not served:
            return Check(False, "no worker reports a loaded model")
        scores = {v: scorer.quality(v, metric) for v in sorted(set(served.values()))}
        detail = ", ".join(f"v{v}: {metric}={q:.4f}" for v, q in scores.items())
        return Check(min(scores.values()) >= minimum, f"served {detail}")

    return seconds_until(look, f"served model {metric} >= {minimum}", timeout, since, interval, configuration)


def predictions_lost(
    traffic_log: str,
    lake_root: str,
    since: str = "fault",
    lookback_seconds: float = 10.0,
    settle_seconds: float = 5.0,
    window_seconds: float = 30.0,
    configuration: Configuration | None = None,
) -> int:
    """Count predictions the workload got an answer for that are missing from the lake's inference log.

    Covers answers from ``lookback_seconds`` before the clock start (rows still queued in
    a worker when it died) to ``settle_seconds`` ago (rows a live worker has not flushed
    yet are not lost).
    """
    start = _window_start(configuration, since, window_seconds) - lookback_seconds
    answered = {i for o in read_outcomes(traffic_log, start=start, end=time.time() - settle_seconds) for i in o.ids}
    if not answered:
        return 0
    lake = Lake(lake_root)
    if not lake.exists("inference_log"):
        return len(answered)
    logged = set(lake.read("inference_log", columns=["_request_id"]).column("_request_id").to_pylist())
    return len(answered - logged)


#: Faults whose ledger entry names one worker (``detail.pid``).
_WORKER_FAULTS = ("hang_worker", "kill_worker")


def seconds_until_worker_replaced(
    url: str,
    workers: int,
    timeout: float = 60.0,
    pid_file: str | None = None,
    since: str = "fault",
    interval: float = 0.5,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the worker this run's fault stopped or killed is gone and the master has the given number running.

    A stopped (SIGSTOP) worker is alive to the process table, so it is not counted as
    running; the worker comes from the ledger's fault (``detail.pid``). Before any fault
    it only counts the running workers. Returns the seconds from the clock start.
    """
    fault = ledger.last_fault(configuration, *_WORKER_FAULTS)
    victim = int(fault["pid"]) if fault is not None else None

    def look() -> Check:
        server = _server.find_server(url, pid_file)
        running = [pid for pid in server.workers if not processes.stopped(pid)]
        still = victim is not None and victim in server.workers
        seen = f"master {server.master} runs {running}" + (f", worker {victim} still there" if still else "")
        return Check(len(running) >= workers and not still, seen)

    return seconds_until(look, f"{workers} serving workers running", timeout, since, interval, configuration)


def seconds_until_servers_ready(
    url: str,
    servers: int,
    timeout: float = 60.0,
    pid_file: str | None = None,
    since: str = "fault",
    interval: float = 0.1,
    configuration: Configuration | None = None,
) -> float:
    """Poll until the server runs ``servers`` masters, none the one this run killed, each answering ``/ready``.

    A master answers when one of its workers has answered ``GET /ready`` (with the
    champion loaded) since the probe started: the workers share the port, so the probe
    asks until each master's turn came. The killed master comes from the ledger's
    ``kill_replica`` fault. Returns the seconds from the clock start.
    """
    fault = ledger.last_fault(configuration, "kill_replica")
    victim = int(fault["master"]) if fault is not None else None
    answered: set[int] = set()

    def look() -> Check:
        with contextlib.suppress(ServingUnavailable), ServingClient(url) as client:  # a new connection: any worker
            answered.add(processes.parent(int(client.ready(timeout=2.0)["pid"])) or 0)
        server = _server.find_server(url, pid_file)
        waiting = [m for m in server.masters if m not in answered]
        done = len(server.masters) >= servers and victim not in server.masters and not waiting
        return Check(done, f"masters {list(server.masters)}, not yet ready {waiting}")

    return seconds_until(look, f"{servers} servers ready at {url}", timeout, since, interval, configuration)
