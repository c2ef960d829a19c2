"""deployments/prometheus: promtool on the rules, and a real Prometheus scraping a real `selfheal serve`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from serving.processes import free_port, http_ok, wait_until
from tests.deployments.conftest import DEPLOYMENTS, Processes, base_env, write_config

PROMETHEUS = DEPLOYMENTS / "prometheus"
RULES = PROMETHEUS / "rules" / "selfheal.rules.yml"
DASHBOARD = PROMETHEUS / "grafana" / "selfheal-dashboard.json"
SIGNALS = {
    "error_rate",
    "latency",
    "breaker_open",
    "data_quality",
    "data_drift",
    "stale_data",
    "serving_down",
    "missing_rows",
}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is needed (Debian package prometheus; make deps installs it)"
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def serving_sample_names() -> set[str]:
    """Every sample name the model server can export."""
    names: set[str] = set()
    for family in ServingMetrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_every_alert_fires_on_its_signal_and_only_then() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(PROMETHEUS / "rules" / "selfheal.rules.test.yml"))


def test_promtool_checks_the_local_prometheus_config() -> None:
    assert "is valid prometheus config file syntax" in promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_each_signal_has_an_alert() -> None:
    alerts = [r for r in rules() if "alert" in r]
    assert {a["labels"]["signal"] for a in alerts} == SIGNALS
    assert all(a["labels"]["severity"] in ("warning", "critical") and a["annotations"]["summary"] for a in alerts)


def test_rules_and_dashboard_name_only_metrics_the_server_exports() -> None:
    exported = serving_sample_names()
    texts = [r["expr"] for r in rules()] + dashboard_exprs()
    used = {m for text in texts for m in re.findall(r"\b(selfheal_[a-z0-9_]+)", text)}
    serving = {m for m in used if not m.startswith("selfheal_monitor_")}
    assert serving and serving <= exported, serving - exported


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "selfheal-overview" and dash["schemaVersion"] >= 36
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "job"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" and p["targets"] for p in panels)


# -- a real Prometheus ---------------------------------------------------------------------------
@pytest.fixture
def scraped_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`selfheal serve` and a Prometheus scraping it every second with selfheal's rules; (serving, prometheus) URLs."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is needed (Debian package prometheus; make deps installs it)"
    serving_port, prometheus_port = free_port(), free_port()
    config = write_config(tmp_path, serving_port)
    processes = Processes(tmp_path, base_env(tmp_path))
    serving_url, prometheus_url = f"http://127.0.0.1:{serving_port}", f"http://127.0.0.1:{prometheus_port}"
    scrape = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "selfheal-serving", "static_configs": [{"targets": [f"127.0.0.1:{serving_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    try:
        serve = processes.start("serve", [sys.executable, "-m", "flows.cli", "--config", str(config), "serve"])
        prom = processes.start(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
        )
        wait_until(lambda: http_ok(f"{serving_url}/health"), 90, f"selfheal serve\n{serve.tail()}")
        wait_until(lambda: http_ok(f"{prometheus_url}/-/ready"), 60, f"prometheus\n{prom.tail()}")
        yield serving_url, prometheus_url
    finally:
        processes.stop_all()


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=5.0).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_scrapes_selfheal_serve_and_evaluates_the_rules(scraped_server: tuple[str, str]) -> None:
    serving_url, prometheus_url = scraped_server
    wait_until(lambda: query(prometheus_url, 'up{job="selfheal-serving"} == 1'), 30, "a successful scrape")
    # No model is registered in this fresh home, so /predict answers 503: a server error as far as alerts go.
    statuses = {httpx.post(f"{serving_url}/predict", json={"amount": 1.0}, timeout=10).status_code for _ in range(5)}
    assert statuses and all(s >= 500 for s in statuses), statuses
    series = wait_until(
        lambda: query(prometheus_url, 'selfheal_http_requests_total{path="/predict"}'), 30, "/predict in Prometheus"
    )
    assert {s["metric"]["status"] for s in series} == {str(s) for s in statuses}
    assert query(prometheus_url, "selfheal_breaker_state")  # one gauge per worker

    # The error-rate alert reads these very series: with failing traffic going on, it goes pending
    # (for: 2m) within seconds.
    def pending() -> list[dict[str, Any]]:
        httpx.post(f"{serving_url}/predict", json={"amount": 1.0}, timeout=10)
        found = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=5.0).json()["data"]["alerts"]
        return [a for a in found if a["labels"]["alertname"] == "SelfhealPredictErrorRateHigh"]

    alerts = wait_until(pending, 30, "SelfhealPredictErrorRateHigh to go pending")
    assert alerts[0]["state"] == "pending" and alerts[0]["labels"]["job"] == "selfheal-serving"
    groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5.0).json()["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules())
    assert all(r["health"] in ("ok", "unknown") for r in loaded), [r for r in loaded if r["health"] == "err"]
    for expr in dashboard_exprs():
        query(prometheus_url, expr.replace("$job", ".+").replace("$__rate_interval", "1m"))
