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

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

#: Request latency buckets (seconds): sub-millisecond to a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServingMetrics:
    """Every metric the server exports, registered on one registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "selfheal_http_requests", "HTTP requests answered, by route and status code", ["path", "status"], registry=r
        )
        self.http_latency = Histogram(
            "selfheal_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "selfheal_predictions",
            "Rows predicted, by who answered: primary, fallback or baseline",
            ["served_by"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "selfheal_batch_rows",
            "Rows per model call (micro-batches of concurrent requests)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.prediction_errors = Counter(
            "selfheal_prediction_errors",
            "Model calls that failed, by model role (primary|fallback) and reason (error|timeout)",
            ["model", "reason"],
            registry=r,
        )
        self.unavailable = Counter(
            "selfheal_prediction_unavailable", "Requests refused because no model could answer (503)", registry=r
        )
        self.breaker_state = Gauge(
            "selfheal_breaker_state",
            "Circuit breaker around the primary model: 0 closed, 1 half-open, 2 open (per worker)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.breaker_transitions = Counter(
            "selfheal_breaker_transitions", "Breaker state changes, by the state entered", ["state"], registry=r
        )
        self.model_version = Gauge(
            "selfheal_model_version",
            "Model version loaded, by role (primary|fallback); 0 when none (per worker)",
            ["role"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.model_reloads = Counter(
            "selfheal_model_reloads", "Model version loads, by outcome (success|failure)", ["outcome"], registry=r
        )
        self.prediction_score = Histogram(
            "selfheal_prediction_score",
            "Distribution of scores (positive-class or top-class probability)",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.predicted_class = Counter(
            "selfheal_predicted_class", "Rows predicted per class label (classifiers)", ["label"], registry=r
        )
        self.prediction_value = Histogram(
            "selfheal_prediction_value",
            "Distribution of predicted values (regressors)",
            buckets=(-1e6, -1e3, -100, -10, -1, 0, 1, 10, 100, 1e3, 1e6),
            registry=r,
        )
        self.release_rows = Counter(
            "selfheal_release_rows",
            "Rows answered during a release, by the arm they were routed to (champion|challenger)",
            ["variant"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "selfheal_shadow_rows",
            "Rows mirrored to a shadow challenger, by outcome (predicted|failed|dropped)",
            ["outcome"],
            registry=r,
        )
        self.release_share = Gauge(
            "selfheal_release_share",
            "Share of requests a challenger answers (canary) or sees mirrored (shadow); per worker",
            ["mode"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.log_queue_rows = Gauge(
            "selfheal_log_queue_rows",
            "Inference/feedback rows waiting to be written",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.log_rows_written = Counter("selfheal_log_rows_written", "Rows appended to the lake", ["table"], registry=r)
        self.log_rows_dead_lettered = Counter(
            "selfheal_log_rows_dead_lettered",
            "Rows the lake refused, kept in the dead-letter folder",
            ["table"],
            registry=r,
        )
        self.log_rows_replayed = Counter(
            "selfheal_log_rows_replayed", "Dead-letter rows later written to the lake", ["table"], registry=r
        )
        self.log_write_failures = Counter(
            "selfheal_log_write_failures", "Lake appends that failed", ["table"], registry=r
        )
        self.log_rows_dropped = Counter(
            "selfheal_log_rows_dropped", "Rows dropped because the log queue was full or unwritable", registry=r
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
