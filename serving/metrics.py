"""Prometheus metrics of the model server.

Under gunicorn every worker is a process, so the metrics use prometheus_client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``serving.server``
sets it): ``/metrics`` on any worker then reports the sum over all workers, and
per-worker gauges (breaker state, model version) carry a ``pid`` label.

Example:
    >>> metrics = ServingMetrics()
    >>> metrics.predictions.labels("primary").inc(8)
    >>> body, content_type = metrics.render()
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from serving import processes

#: Request latency buckets (seconds): sub-millisecond to a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
VALUE_BUCKETS = (-1e6, -1e3, -100, -10, -1, 0, 1, 10, 100, 1e3, 1e6)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class LogMetrics:
    """The inference log's metrics, on their own registry: what a shadow process (which writes
    ``shadow_log`` and answers no request) registers, so that it adds no per-worker series.

    The log queue gauge is summed over the live processes; the counters over every one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._define_log()

    # Factories: every metric is registered on this app's registry (full names kept greppable).
    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float], *labels: str) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str, mode: Literal["liveall", "livesum"] = "liveall") -> Gauge:
        return Gauge(name, doc, labels, multiprocess_mode=mode, registry=self.registry)

    def _define_log(self) -> None:
        self.log_queue_rows = self._gauge(
            "selfheal_log_queue_rows", "Inference/feedback rows waiting to be written", mode="livesum"
        )
        self.log_rows_written = self._counter("selfheal_log_rows_written", "Rows appended to the lake", "table")
        self.log_rows_dead_lettered = self._counter(
            "selfheal_log_rows_dead_lettered", "Rows the lake refused, kept in the dead-letter folder", "table"
        )
        self.log_rows_replayed = self._counter(
            "selfheal_log_rows_replayed", "Dead-letter rows later written to the lake", "table"
        )
        self.log_write_failures = self._counter("selfheal_log_write_failures", "Lake appends that failed", "table")
        self.log_rows_dropped = self._counter(
            "selfheal_log_rows_dropped", "Rows dropped because the log queue was full or unwritable"
        )


class ServingMetrics(LogMetrics):
    """Every metric the server exports, registered on one registry (one per app).

    Gauges are per worker (``liveall``: a ``pid`` label, dropped when the worker
    dies) except the log queue, which is summed over the live workers.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self._define_http()
        self._define_predictions()
        self._define_models()
        self._define_release()

    def _define_http(self) -> None:
        self.http_requests = self._counter(
            "selfheal_http_requests", "HTTP requests answered, by route and status code", "path", "status"
        )
        self.http_latency = self._histogram(
            "selfheal_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            LATENCY_BUCKETS,
            "path",
        )

    def _define_predictions(self) -> None:
        self.predictions = self._counter(
            "selfheal_predictions", "Rows predicted, by who answered: primary, fallback or baseline", "served_by"
        )
        self.batch_rows = self._histogram(
            "selfheal_batch_rows", "Rows per model call (micro-batches of concurrent requests)", BATCH_ROW_BUCKETS
        )
        self.prediction_errors = self._counter(
            "selfheal_prediction_errors",
            "Model calls that failed, by model role (primary|fallback) and reason (error|timeout)",
            "model",
            "reason",
        )
        self.unavailable = self._counter(
            "selfheal_prediction_unavailable", "Requests refused because no model could answer (503)"
        )
        self.prediction_score = self._histogram(
            "selfheal_prediction_score",
            "Distribution of scores (positive-class or top-class probability)",
            SCORE_BUCKETS,
        )
        self.predicted_class = self._counter(
            "selfheal_predicted_class", "Rows predicted per class label (classifiers)", "label"
        )
        self.prediction_value = self._histogram(
            "selfheal_prediction_value", "Distribution of predicted values (regressors)", VALUE_BUCKETS
        )

    def _define_models(self) -> None:
        self.breaker_state = self._gauge(
            "selfheal_breaker_state",
            "Circuit breaker around the primary model: 0 closed, 1 half-open, 2 open (per worker)",
        )
        self.breaker_transitions = self._counter(
            "selfheal_breaker_transitions", "Breaker state changes, by the state entered", "state"
        )
        self.model_version = self._gauge(
            "selfheal_model_version",
            "Model version loaded, by role (primary|fallback); 0 when none (per worker)",
            "role",
        )
        self.model_reloads = self._counter(
            "selfheal_model_reloads", "Model version loads, by outcome (success|failure)", "outcome"
        )

    def _define_release(self) -> None:
        self.release_rows = self._counter(
            "selfheal_release_rows",
            "Rows answered during a release, by the arm they were routed to (champion|challenger)",
            "variant",
        )
        self.shadow_rows = self._counter(
            "selfheal_shadow_rows",
            "Rows mirrored to a shadow challenger, by outcome (predicted|failed|dropped)",
            "outcome",
        )
        self.release_share = self._gauge(
            "selfheal_release_share",
            "Share of requests a challenger answers (canary) or sees mirrored (shadow); per worker",
            "mode",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text: every worker's metrics in multiprocess mode, else this registry's."""
        folder = multiprocess_dir()
        if folder:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn ``child_exit`` hook)."""
    if multiprocess_dir():
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


#: A live gauge's file in the multiprocess folder: ``gauge_liveall_<pid>.db``, ``gauge_livesum_<pid>.db``.
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def forget_dead_workers() -> list[int]:
    """Drop the live gauges of every worker in the folder that is gone; return their pids.

    A worker's ``child_exit`` hook runs in its master: when the master itself is
    killed, nothing drops its workers' gauges, and under ``--replicas`` (one folder
    for every master) ``/metrics`` would report them on. The supervisor calls this.
    """
    folder = multiprocess_dir()
    if not folder:
        return []
    pids = {int(m.group(1)) for f in Path(folder).iterdir() if (m := _LIVE_GAUGE_FILE.match(f.name))}
    dead = sorted(pid for pid in pids if not processes.alive(pid))
    for pid in dead:
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    return dead
