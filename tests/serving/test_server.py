"""The real server under changes: hot reload, a broken version, a failing model, SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from checkpoints import Lake
from tests.serving.conftest import ADMIN_TOKEN, Load, ModelStore, http, predict_bodies, wait_until

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_reload_under_load_fails_no_request_and_a_broken_version_keeps_the_old_one(
    model_store: ModelStore, live_server: Any
) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    server = live_server(workers=2, poll_seconds=0.5)
    load = Load(server.url, predict_bodies(model_store), threads=4).start()
    try:
        load.wait_for(200)
        # 1. A good new version, pushed by the admin endpoint while requests keep coming.
        model_store.set_aliases(champion=v["lr"], previous=v["hgb"])
        answer = http.post(f"{server.url}/admin/reload", headers=AUTH, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == v["lr"]

        def every_worker_serves(version: str) -> bool:
            probes = [http.get(f"{server.url}/ready", timeout=5).json() for _ in range(8)]
            return all(p["model_version"] == version for p in probes)

        wait_until(lambda: every_worker_serves(v["lr"]), timeout=60, what="every worker to serve the new version")
        load.wait_for(200)
        switched = load.versions[v["lr"]]

        # 2. A version whose artifact is garbage: the poll and the admin push both refuse it.
        model_store.set_aliases(champion=v["broken"], previous=v["lr"])
        refused = http.post(f"{server.url}/admin/reload", headers=AUTH, timeout=60)
        assert refused.status_code == 409
        assert f"version {v['broken']}" in refused.json()["detail"]
        assert f"still serving version {v['lr']}" in refused.json()["detail"]
        wait_until(
            lambda: f"version {v['broken']}" in (http.get(f"{server.url}/ready").json()["last_reload_error"] or ""),
            timeout=60,
            what="the failure to be reported",
        )
        load.wait_for(200)
    finally:
        load.stop()
    assert set(load.statuses) == {"200"}, load.statuses
    assert load.versions[v["hgb"]] > 0 and switched > 0
    assert set(load.versions) == {v["hgb"], v["lr"]}  # never the broken one
    assert every_worker_serves(v["lr"])
    assert 'selfheal_model_reloads_total{outcome="failure"}' in http.get(f"{server.url}/metrics").text


def test_breaker_opens_on_a_failing_model_and_the_fallback_answers(model_store: ModelStore, live_server: Any) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["switch"], previous=v["hgb"])
    server = live_server(workers=2, breaker_fail_max=3, breaker_reset_seconds=1, predict_timeout_seconds=0.5)
    record = model_store.records(1)[0]
    assert http.post(f"{server.url}/predict", json=record).json()["served_by"] == "primary"
    load = Load(server.url, predict_bodies(model_store), threads=4).start()
    try:
        # The load's own primary answers come before the fault (its threads may start late on a busy machine).
        wait_until(lambda: load.served_by["primary"] > 0, timeout=30, what="the load's first primary answers")
        model_store.switch.write_text("raise")

        def a_breaker_opened() -> bool:
            # The client's connections may all land on one worker: any worker's breaker opening counts.
            return any(line.endswith(" 2.0") for line in _breaker_lines(http.get(f"{server.url}/metrics").text))

        wait_until(a_breaker_opened, timeout=60, what="a worker's breaker to open")
        answer = http.post(f"{server.url}/predict", json=record).json()
        assert answer["served_by"] == "fallback" and answer["model_version"] == v["hgb"]
        # A hung primary times out and is answered by the fallback too.
        model_store.switch.write_text("sleep:3")
        wait_until(
            lambda: 'reason="timeout"' in http.get(f"{server.url}/metrics").text, timeout=60, what="a probe to time out"
        )
        load.wait_for(50)
        model_store.switch.unlink()
        wait_until(
            lambda: all(
                http.post(f"{server.url}/predict", json=record).json()["served_by"] == "primary" for _ in range(6)
            ),
            timeout=60,
            what="half-open probes to close the breakers",
        )
    finally:
        model_store.switch.unlink(missing_ok=True)
        load.stop()
    assert set(load.statuses) == {"200"}, load.statuses
    assert load.served_by["fallback"] > 0 and load.served_by["primary"] > 0
    text = http.get(f"{server.url}/metrics").text
    assert 'selfheal_prediction_errors_total{model="primary",reason="error"}' in text
    assert 'selfheal_breaker_transitions_total{state="open"}' in text


def _breaker_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("selfheal_breaker_state{")]


def test_sigterm_writes_every_queued_log_row(model_store: ModelStore, live_server: Any, tmp_path: Path) -> None:
    """Started through `selfheal serve` (the CLI execs the supervisor of 2 replicas, which forwards SIGTERM)."""
    model_store.set_aliases(champion=model_store.versions["hgb"])
    config = tmp_path / "selfheal.yaml"
    config.write_text(
        f"model_name: clf\ntracking_uri: {model_store.tracking_uri}\nhome: {tmp_path / 'home'}\n"
        f"artifact_root: {model_store.root / 'artifacts'}\n"
        f"lake:\n  root: {tmp_path / 'lake'}\n"
    )
    server = live_server(
        workers=1,  # per replica: the default serving.replicas (2) runs 2 workers in all
        argv=[sys.executable, "-m", "flows.cli", "-c", str(config), "serve"],
        log_flush_seconds=3600,
        log_batch_rows=1_000_000,
        lake_root=None,
    )
    ids: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(30):
            answer = client.post("/predict", json=model_store.records(1 + i % 3, start=i)).json()
            ids.extend(answer["ids"])
        labels = [{"request_id": rid, "label": 1} for rid in ids[:7]]
        assert client.post("/feedback", json=labels).status_code == 202
    lake = Lake(tmp_path / "lake")
    assert not lake.exists("inference_log")  # nothing flushed yet: the rows are queued
    assert server.stop(signal.SIGTERM) == 0, server.tail()
    log = lake.read("inference_log", columns=["_request_id", "_served_by"]).to_pandas()
    assert sorted(log["_request_id"]) == sorted(ids)
    assert sorted(lake.read("feedback").to_pandas()["request_id"]) == sorted(ids[:7])
