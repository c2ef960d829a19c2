"""Reading the serving metrics the monitor scrapes."""

from __future__ import annotations

from prometheus_client import generate_latest

from flows.monitor.scrape import parse_metrics
from serving.metrics import ServingMetrics


def test_parse_metrics_counts_requests_errors_and_breaker() -> None:
    text = (
        "# TYPE app_requests_total counter\n"
        'app_requests_total{code="200"} 90\napp_requests_total{code="500"} 10\n'
        "# TYPE app_fallback_total counter\napp_fallback_total 4\n"
        "# TYPE app_breaker_state gauge\n"
        'app_breaker_state{state="open"} 0\napp_breaker_state{state="closed"} 1\n'
    )
    snap = parse_metrics(text)
    assert snap.counters == {"requests": 100.0, "server_errors": 10.0, "fallbacks": 4.0}
    assert snap.breaker_open is False


def test_parse_metrics_reads_the_servers_own_exposition() -> None:
    m = ServingMetrics()
    m.http_requests.labels(path="/predict", status="200").inc(95)
    m.http_requests.labels(path="/predict", status="503").inc(5)
    m.http_requests.labels(path="/metrics", status="200").inc(40)  # the monitor's own scrapes
    m.predictions.labels(served_by="primary").inc(90)
    m.predictions.labels(served_by="fallback").inc(5)
    m.prediction_errors.labels(model="primary", reason="timeout").inc(3)
    m.breaker_transitions.labels(state="open").inc()
    m.breaker_state.set(2)
    m.log_rows_dropped.inc(7)
    snap = parse_metrics(generate_latest(m.registry).decode())
    assert snap.counters == {
        "requests": 100.0,
        "server_errors": 5.0,
        "fallbacks": 5.0,
        "errors": 3.0,
        "breaker_opens": 1.0,
        "rows_dropped": 7.0,
    }
    assert snap.breaker_open is True
