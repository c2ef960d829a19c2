"""Reading the model server's ``/metrics`` (Prometheus text format).

What the monitor takes from it, matched by family name and labels so it
reads ``serving.metrics`` (``selfheal_*``) and any server that names things alike:

=================  =========================================================
requests           counter whose name contains ``request``, minus the
                   ``/metrics``, ``/health`` and ``/ready`` paths; a
                   ``status``/``code`` label starting with ``5`` (or
                   ``outcome``/``result`` = ``error``) is a server error
model errors       counter whose name contains ``error`` (failed model calls)
breaker            gauge ``*breaker*``: ``state="open"`` = 1, ``*breaker_open*`` = 1,
                   or ``*breaker_state*`` = 2 (0 closed, 1 half-open, 2 open) is
                   open now; counter ``*breaker*`` with ``open`` in its name or
                   ``state="open"`` counts openings
fallbacks          counter ``*fallback*``, or a ``served_by`` label other than ``primary``
rows dropped       counter whose name contains ``dropped`` (inference-log rows lost)
=================  =========================================================

Counters are cumulative since the worker started; the monitor keeps the last
values and turns them into per-window deltas (a drop means a restart).

Example:
    >>> snap = scrape("http://127.0.0.1:8765", timeout=2.0)
    >>> snap.counters["requests"], snap.breaker_open
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from serving.client import ServingClient

logger = logging.getLogger(__name__)

COUNTERS = ("requests", "errors", "server_errors", "breaker_opens", "fallbacks", "rows_dropped")
_PROBE_PATHS = ("/metrics", "/health", "/ready")


@dataclass(frozen=True)
class ServingSnapshot:
    """Cumulative serving counters at one scrape.

    Attributes:
        counters: ``requests``, ``errors``, ``server_errors``, ``breaker_opens``,
            ``fallbacks`` (only those the server exposes).
        breaker_open: whether a breaker reports open now (None: not exposed).
    """

    counters: Mapping[str, float] = field(default_factory=dict)
    breaker_open: bool | None = None


def parse_metrics(text: str) -> ServingSnapshot:
    """Parse Prometheus exposition text into a ``ServingSnapshot``."""
    counters: dict[str, float] = {}
    breaker_open: bool | None = None

    def add(key: str, value: float) -> None:
        counters[key] = counters.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        name = family.name.lower()
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_sum", "_count")) and family.type != "counter":
                continue
            if sample.name.endswith("_created"):
                continue
            labels = {k: str(v).lower() for k, v in sample.labels.items()}
            value = float(sample.value)
            if "breaker" in name and family.type == "gauge":
                if "state" in labels:
                    is_open = labels["state"] == "open" and value >= 1.0
                elif "state" in name:
                    is_open = value >= 2.0
                else:
                    is_open = "open" in name and value >= 1.0
                breaker_open = bool(breaker_open) or is_open
                continue
            if family.type != "counter":
                continue
            if "breaker" in name:
                if "open" in name or labels.get("state") == "open":
                    add("breaker_opens", value)
            elif "fallback" in name:
                add("fallbacks", value)
            elif "dropped" in name:
                add("rows_dropped", value)
            elif "error" in name:
                add("errors", value)
            elif "served_by" in labels:
                if labels["served_by"] != "primary":
                    add("fallbacks", value)
            elif "request" in name:
                if labels.get("path", "").rstrip("/") in _PROBE_PATHS:
                    continue
                add("requests", value)
                status = labels.get("status") or labels.get("code") or labels.get("status_code") or ""
                outcome = labels.get("outcome") or labels.get("result") or ""
                add("server_errors", value if status.startswith("5") or outcome == "error" else 0.0)
    return ServingSnapshot(counters, breaker_open)


@functools.lru_cache(maxsize=8)
def _server(url: str) -> ServingClient:
    """One client per server URL and process: the monitor scrapes every run, a client costs ~70 ms to make."""
    return ServingClient(url)


def scrape(url: str, timeout: float = 2.0) -> ServingSnapshot:
    """GET ``<url>/metrics`` and parse it.

    Raises:
        ServingUnavailable: the server did not answer, or answered non-200.
    """
    return parse_metrics(_server(url).metrics(timeout))


def deltas(current: Mapping[str, float], previous: Mapping[str, float]) -> dict[str, float]:
    """Per-window increments of cumulative counters; a counter that went down restarted."""
    out = {}
    for key, value in current.items():
        before = previous.get(key)
        out[key] = value if before is None or value < before else value - before
    return out
