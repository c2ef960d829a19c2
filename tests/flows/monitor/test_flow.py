"""The monitor on small real lakes: reading, judging, persisting, the flow and the CLI."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from checkpoints import Lake
from flows.healer.diagnosis import Cause, Context, diagnose
from flows.monitor.detectors import MonitorThresholds
from flows.monitor.flow import Champion, baseline_metrics, champion_context, monitor_flow, read_window
from flows.monitor.passes import forget_prediction_reference
from flows.monitor.signals import Signal, SignalKind
from flows.monitor.state import commit_run, load_state
from flows.monitor.window import assess
from tests.flows.monitor.fixtures import T0, write_feedback, write_predictions, write_silver

CHAMPION = Champion("1", None, {"roc_auc": 0.99, "accuracy": 0.97})


def run_once(
    lake: Lake, at_minute: float, t: MonitorThresholds, url: str | None = None, champion: Champion = CHAMPION
) -> list[Signal]:
    """One monitor run through the plain functions (read, assess, commit)."""
    state = load_state(lake)
    window = read_window(lake, state, t, champion, url, "binary", T0 + timedelta(minutes=at_minute), "is_fraud")
    result = assess(window, state, t)
    assert commit_run(lake, result.state, result.rows)
    return result.signals


def kinds(signals: list[Signal]) -> set[str]:
    return {s.kind.value for s in signals}


@pytest.fixture
def silver_lake(lake: Lake) -> Lake:
    write_silver(lake, np.random.default_rng(0))
    return lake


def _batch(lake: Lake, rng: np.random.Generator, minute: float, tag: str, **kw: object) -> pa.Table:
    """1000 predictions spread over the minute before ``minute`` - 1 (inside the ingest lag), labeled."""
    start = T0 + timedelta(minutes=minute) - timedelta(seconds=100)
    concept = bool(kw.pop("concept", False))
    preds = write_predictions(lake, rng, kw.pop("n", 1000), start, prefix=f"{tag}-", **kw)  # type: ignore[arg-type]
    write_feedback(lake, preds, start + timedelta(seconds=65), concept=concept, flip=0.03)
    return preds


def test_quiet_data_raises_no_signals_and_advances_the_watermark(silver_lake: Lake) -> None:
    rng = np.random.default_rng(1)
    t = MonitorThresholds()
    for i, minute in enumerate([2, 4, 6]):
        _batch(silver_lake, rng, minute, f"b{i}")
        assert run_once(silver_lake, minute, t) == []
    state = load_state(silver_lake)
    assert state.seq == 3
    assert state.inference_watermark == T0 + timedelta(minutes=6) - timedelta(seconds=t.ingest_lag_seconds)
    metrics = silver_lake.read("metrics")
    names = set(metrics.column("name").to_pylist())
    assert {"drift.effect_size", "serving.latency_p99_ms", "rows.inference_log", "monitor.run"} <= names
    assert sorted(set(metrics.column("run").to_pylist())) == [1, 2, 3]


def test_covariate_shift_raises_data_drift_naming_the_feature(silver_lake: Lake) -> None:
    rng = np.random.default_rng(2)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0")
    assert run_once(silver_lake, 2, t) == []
    _batch(silver_lake, rng, 4, "b1", shift=1.0)
    signals = run_once(silver_lake, 4, t)
    drift = [s for s in signals if s.kind == SignalKind.DATA_DRIFT]
    assert len(drift) == 1 and drift[0].evidence["drifted_features"] == ["amount"]
    assert drift[0].window.start == T0 + timedelta(minutes=2) - timedelta(seconds=t.ingest_lag_seconds)


def test_concept_drift_raises_concept_and_performance_signals(silver_lake: Lake) -> None:
    rng = np.random.default_rng(3)
    t = MonitorThresholds.from_mapping({"concept": {"warmup": 500}})
    _batch(silver_lake, rng, 2, "b0")
    assert run_once(silver_lake, 2, t) == []
    _batch(silver_lake, rng, 4, "b1", concept=True)
    signals = run_once(silver_lake, 4, t)
    assert {"concept_drift", "performance_drop"} <= kinds(signals)
    assert "data_drift" not in kinds(signals)  # the features did not move
    concept = next(s for s in signals if s.kind == SignalKind.CONCEPT_DRIFT)
    assert concept.evidence["window_error"] > 0.2 > concept.evidence["baseline_error"]


@pytest.mark.parametrize(
    ("shift", "concept", "cause"), [(1.0, False, Cause.DATA_DRIFT), (0.0, True, Cause.CONCEPT_DRIFT)]
)
def test_a_quality_drop_is_concept_drift_only_when_its_inputs_did_not_shift(
    silver_lake: Lake, shift: float, concept: bool, cause: Cause
) -> None:
    """Labels can arrive before a drift window fills: the quality signal tests its own predictions' inputs."""
    rng = np.random.default_rng(8)
    t = MonitorThresholds.from_mapping({"min_window_rows": 100_000, "concept": {"warmup": 500}})
    _batch(silver_lake, rng, 2, "b0")
    assert run_once(silver_lake, 2, t) == []
    start = T0 + timedelta(minutes=4) - timedelta(seconds=100)
    preds = write_predictions(silver_lake, rng, 1000, start, prefix="b1-", shift=shift)
    # Under either fault the labels disagree with the model far more than before.
    write_feedback(silver_lake, preds, start + timedelta(seconds=65), concept=concept, flip=0.3)
    signals = run_once(silver_lake, 4, t)
    assert "data_drift" not in kinds(signals)  # no drift window was full
    drop = next(s for s in signals if s.kind == SignalKind.PERFORMANCE_DROP)
    assert drop.evidence["inputs_drifted"] is (shift > 0)
    assert ("amount" in drop.evidence["input_drifted_features"]) is (shift > 0)
    assert [d.cause for d in diagnose(signals, Context(now=T0 + timedelta(minutes=4)))] == [cause]


def test_prediction_reference_is_written_once_then_compared(silver_lake: Lake) -> None:
    rng = np.random.default_rng(4)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0")
    run_once(silver_lake, 2, t)
    assert silver_lake.read("prediction_reference").num_rows == 1000
    _batch(silver_lake, rng, 4, "b1", shift=1.0)
    signals = run_once(silver_lake, 4, t)
    assert "prediction_drift" in kinds(signals)
    assert silver_lake.read("prediction_reference").num_rows == 1000


def test_a_forgotten_prediction_reference_is_made_again_from_the_next_window(silver_lake: Lake) -> None:
    rng = np.random.default_rng(4)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0")
    run_once(silver_lake, 2, t)
    first = silver_lake.read("prediction_reference")

    forgotten = T0 + timedelta(minutes=2)
    assert forget_prediction_reference(silver_lake, "1", at=forgotten)
    assert silver_lake.read("prediction_reference").num_rows == 0
    assert not forget_prediction_reference(silver_lake, "1", at=forgotten)  # nothing left to drop

    _batch(silver_lake, rng, 4, "b1", shift=1.0)
    signals = run_once(silver_lake, 4, t)
    assert "prediction_drift" not in kinds(signals)  # this window is the new reference: nothing to compare
    again = silver_lake.read("prediction_reference")
    assert again.num_rows == first.num_rows and again.column("_score") != first.column("_score")


def test_a_forgotten_prediction_reference_is_not_made_from_rows_served_before(silver_lake: Lake) -> None:
    """The chaos matrix on a1cf112: a model_mismatch resolved (v12's reference dropped), the
    registered v12 served again, and the monitor's next window still held the swapped model's
    v12 rows: the reference was made from them again, and the registered model read as
    prediction drift (a data_drift incident that swallowed data-drift-concept's)."""
    rng = np.random.default_rng(4)
    t = MonitorThresholds()
    at = T0 + timedelta(seconds=10)
    write_predictions(silver_lake, rng, 500, at, prefix="swapped-", inverted=True, seconds=30)
    forget_prediction_reference(silver_lake, "1", at=at + timedelta(seconds=35))
    registered = write_predictions(silver_lake, rng, 500, at + timedelta(seconds=40), prefix="registered-", seconds=30)
    run_once(silver_lake, 2, t)  # one drift window holds both
    made = silver_lake.read("prediction_reference")
    assert made.column("_score").to_pylist() == registered.column("_score").to_pylist()

    _batch(silver_lake, rng, 4, "b1")  # the registered model, as before
    assert "prediction_drift" not in kinds(run_once(silver_lake, 4, t))


@pytest.mark.parametrize("served_as", ["challenger", "champion"])
def test_a_canary_challengers_predictions_are_not_the_champions_prediction_drift(
    silver_lake: Lake, served_as: str
) -> None:
    """A worse canary's 20% of scores are the release analysis's to judge, not prediction drift
    (a false data_drift incident in the chaos matrix, release-canary-worse, on 680446a).
    The same rows answered by the champion's version are drift: the data can raise it."""
    rng = np.random.default_rng(4)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0")
    run_once(silver_lake, 2, t)  # the champion's prediction reference
    start = T0 + timedelta(minutes=4) - timedelta(seconds=100)
    write_predictions(silver_lake, rng, 800, start, prefix="b1-")
    if served_as == "challenger":
        write_predictions(silver_lake, rng, 200, start, prefix="c-", version="2", variant="challenger", inverted=True)
    else:
        write_predictions(silver_lake, rng, 200, start, prefix="c-", inverted=True)

    signals = run_once(silver_lake, 4, t)

    assert ("prediction_drift" in kinds(signals)) is (served_as == "champion")
    assert "data_drift" not in kinds(signals)  # the inputs are the same either way
    assert set(silver_lake.read("prediction_reference").column("model_version").to_pylist()) == {"1"}


def test_rows_accumulate_until_a_drift_window_is_full(silver_lake: Lake) -> None:
    rng = np.random.default_rng(5)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0", n=300)
    run_once(silver_lake, 2, t)
    state = load_state(silver_lake)
    lag = timedelta(seconds=t.ingest_lag_seconds)
    assert state.drift_watermark == T0 + timedelta(minutes=2) - lag - timedelta(hours=1)
    _batch(silver_lake, rng, 4, "b1", n=300)
    window = read_window(silver_lake, state, t, CHAMPION, None, "binary", T0 + timedelta(minutes=4), "is_fraud")
    assert window.inference.num_rows == 300
    assert window.drift_rows is not None and window.drift_rows.num_rows == 600


def test_state_survives_a_crash_between_state_file_and_commit(silver_lake: Lake) -> None:
    rng = np.random.default_rng(6)
    t = MonitorThresholds()
    _batch(silver_lake, rng, 2, "b0")
    run_once(silver_lake, 2, t)
    before = load_state(silver_lake)
    orphan = before.evolve(seq=before.seq + 1, inference_watermark=T0 + timedelta(days=9))
    path = silver_lake.storage.join("_monitor", "state", f"{orphan.seq:012d}.json")
    silver_lake.storage.write_bytes(path, orphan.to_json().encode())  # the crash: no metrics commit
    assert load_state(silver_lake) == before
    rows = silver_lake.read("metrics").num_rows
    again = before.evolve(seq=before.seq)
    assert commit_run(silver_lake, again, [{"ts": T0, "name": "x", "value": 1.0}]) is False  # seq taken
    assert silver_lake.read("metrics").num_rows == rows


class _MetricsServer:
    def __init__(self) -> None:
        self.text = ""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set(self, requests_ok: int, requests_5xx: int, opens: int) -> None:
        self.text = (
            "# TYPE selfheal_requests_total counter\n"
            f'selfheal_requests_total{{status="200"}} {requests_ok}\n'
            f'selfheal_requests_total{{status="503"}} {requests_5xx}\n'
            "# TYPE selfheal_breaker_opens_total counter\n"
            f"selfheal_breaker_opens_total {opens}\n"
            "# TYPE selfheal_breaker_open gauge\n"
            f"selfheal_breaker_open {1 if opens else 0}\n"
        )


@pytest.fixture
def metrics_server() -> Iterator[_MetricsServer]:
    server = _MetricsServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_serving_counters_become_error_rate_and_breaker_signals(
    silver_lake: Lake, metrics_server: _MetricsServer
) -> None:
    rng = np.random.default_rng(7)
    t = MonitorThresholds()
    metrics_server.set(1000, 0, 0)
    _batch(silver_lake, rng, 2, "b0")
    assert run_once(silver_lake, 2, t, metrics_server.url) == []
    metrics_server.set(2000, 0, 0)
    _batch(silver_lake, rng, 4, "b1")
    assert run_once(silver_lake, 4, t, metrics_server.url) == []
    metrics_server.set(2500, 300, 1)  # 300 of 800 new requests failed, the breaker opened
    _batch(silver_lake, rng, 6, "b2")
    first = run_once(silver_lake, 6, t, metrics_server.url)
    assert "breaker_open" in kinds(first) and "error_rate" not in kinds(first)  # error_rate needs 2 windows
    metrics_server.set(3000, 600, 1)
    _batch(silver_lake, rng, 8, "b3")
    second = run_once(silver_lake, 8, t, metrics_server.url)
    err = next(s for s in second if s.kind == SignalKind.ERROR_RATE)
    assert err.evidence["error_rate"] == pytest.approx(300 / 800) and err.evidence["windows_in_a_row"] == 2


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_server_is_serving_down_after_two_windows(silver_lake: Lake) -> None:
    url = _closed_port()
    t = MonitorThresholds()
    assert "serving_down" not in kinds(run_once(silver_lake, 2, t, url))
    signals = run_once(silver_lake, 4, t, url)
    down = next(s for s in signals if s.kind == SignalKind.SERVING_DOWN)
    assert "ConnectError" in down.evidence["error"]


# -- registry ---------------------------------------------------------------------------


def test_baseline_metrics_prefer_holdout_and_skip_train() -> None:
    raw = {"train_roc_auc": 0.99, "holdout_roc_auc": 0.91, "roc_auc": 0.95, "rmse": "3.5", "selfheal.code": "abc"}
    assert baseline_metrics(raw) == {"roc_auc": 0.91, "rmse": 3.5}


def test_champion_context_reads_alias_tags_and_run_metrics(tracking_uri: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    with mlflow.start_run() as run:
        mlflow.log_metric("holdout_roc_auc", 0.93)
    client = MlflowClient(tracking_uri, tracking_uri)  # the registry named: a process-wide one would win
    client.create_registered_model("fraud")
    mv = client.create_model_version("fraud", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_model_version_tag("fraud", mv.version, "selfheal.silver_version", "4")
    client.set_registered_model_alias("fraud", "champion", mv.version)
    champion = champion_context("fraud", tracking_uri)
    assert champion == Champion(str(mv.version), 4, {"roc_auc": 0.93})
    assert champion_context("no-such-model", tracking_uri) == Champion()


# -- the flow and the CLI ------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_flow_runs_end_to_end(silver_lake: Lake) -> None:
    rng = np.random.default_rng(8)
    _batch(silver_lake, rng, 2, "b0")
    quiet = monitor_flow(lake_root=str(silver_lake.root), target="is_fraud", now=T0 + timedelta(minutes=2))
    assert quiet == []
    _batch(silver_lake, rng, 4, "b1", shift=1.0)
    signals = monitor_flow(
        lake_root=str(silver_lake.root),
        thresholds={"drift": {"alpha": 0.01}},
        target="is_fraud",
        now=T0 + timedelta(minutes=4),
    )
    assert "data_drift" in kinds(signals)
    assert all(isinstance(s, Signal) for s in signals)
    assert load_state(silver_lake).seq == 2


@pytest.mark.usefixtures("prefect_harness")  # its signal events go to the session's server
def test_the_healers_monitor_pass_commits_like_the_flow(silver_lake: Lake) -> None:
    """No flow run: the same window read, signals and committed state as ``monitor_flow``."""
    from flows.config import SelfhealConfig
    from flows.monitor.flow import monitor_pass

    cfg = SelfhealConfig(lake={"root": str(silver_lake.root)}, data={"target": "is_fraud"})
    cfg.model_name = ""  # no registry: no champion baseline
    rng = np.random.default_rng(8)
    _batch(silver_lake, rng, 2, "b0")
    assert monitor_pass(cfg, now=T0 + timedelta(minutes=2)) == []
    _batch(silver_lake, rng, 4, "b1", shift=1.0)
    assert "data_drift" in kinds(monitor_pass(cfg, now=T0 + timedelta(minutes=4)))
    assert load_state(silver_lake).seq == 2


@pytest.mark.usefixtures("prefect_harness")
def test_cli_monitor_once_prints_signals(
    silver_lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import build_parser, main

    args = build_parser().parse_args(["monitor", "--interval", "5", "--max-runs", "2", "--no-serving"])
    assert args.interval == 5.0 and args.max_runs == 2 and args.no_serving
    config = tmp_path / "selfheal.yaml"
    config.write_text(f"lake:\n  root: {silver_lake.root}\nthresholds:\n  freshness_seconds: {{}}\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    monkeypatch.setenv("SELFHEAL_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["monitor", "--once", "--no-serving", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == []
    config.write_text(f"lake:\n  root: {silver_lake.root}\nthresholds:\n  drift:\n    alpah: 0.1\n")
    assert main(["monitor", "--once", "--no-serving"]) == 2  # a config error exits 2 (issue 15)
    assert "thresholds.drift.alpah" in capsys.readouterr().err
