"""The golden-dataset probe: a real registry, a real lake and a real model server.

The served model is swapped behind the registry's back (the champion's ``model.skops``
overwritten on disk with another model's, then the server restarted): every health check
stays green, only the golden replay sees it, and the healer repairs it.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from checkpoints import Lake
from checkpoints.golden import GoldenProbe, GoldenRow, compare, latest_probe, record_probe
from checkpoints.incidents import IncidentLog, State
from flows.batch.champion import UnhealthyChampion, load_champion
from flows.config import SelfhealConfig
from flows.healer import golden
from flows.healer.diagnosis import Cause, Context, diagnose
from flows.healer.machine import Healer, _replay_on_output_shift, make_context, observe
from flows.healer.remedies import HealContext
from flows.monitor.passes import PREDICTION_REFERENCE, PREDICTION_REFERENCE_RESETS
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.pipeline.golden import freeze, stratified_sample
from flows.registry import CHAMPION, PREVIOUS, Registry
from serving import processes
from tests import _serving_env
from tests.serving.conftest import ADMIN_TOKEN, LiveServer, _pipeline, _training_frame, launch

TARGET = "label"


# -- the comparison, the diagnosis, the sample, the verdict log ------------------------------------
def _rows(*expected: tuple[Any, float | None]) -> list[GoldenRow]:
    return [
        GoldenRow("3", "run", i, {"x": i}, {"label": label, "score": score})
        for i, (label, score) in enumerate(expected)
    ]


def test_compare_labels_exactly_and_scores_within_the_tolerance() -> None:
    rows = _rows((1, 0.9), (0, 0.2), (1, 0.7))
    assert compare(rows, [1, 0, 1], [0.9, 0.2 + 5e-7, 0.7], 1e-6) == []
    differing = compare(rows, [1, 1, 1], [0.9, 0.2, 0.7001], 1e-6)
    assert [d["row"] for d in differing] == [1, 2]
    assert differing[0]["served"] == {"label": 1, "score": 0.2}
    assert len(compare(rows, [1, 0], [0.9, 0.2], 1e-6)) == 3  # a short answer differs everywhere
    assert len(compare(rows, [1, 0, 1], None, 1e-6)) == 3  # scores frozen, none served
    values = _rows((2.5, None), (3.0, None))  # regression: values within the tolerance
    assert compare(values, [2.5 + 1e-9, 3.0], [None, None], 1e-6) == []
    assert len(compare(values, [2.6, 3.0], [None, None], 1e-6)) == 1


def _signal(kind: SignalKind) -> Signal:
    now = datetime.now(UTC)
    return Signal(kind, Severity.CRITICAL, {}, Window(now - timedelta(seconds=1), now))


def test_a_mismatch_is_its_own_cause_and_explains_the_quality_drop_after_a_promotion() -> None:
    now = datetime.now(UTC)
    ctx = Context(now=now, promoted_at=now - timedelta(minutes=1))
    found = diagnose([_signal(SignalKind.MODEL_MISMATCH), _signal(SignalKind.PERFORMANCE_DROP)], ctx)
    assert [(d.cause, len(d.signals)) for d in found] == [(Cause.MODEL_MISMATCH, 2)]  # not also a bad deploy
    found = diagnose([_signal(SignalKind.SERVING_DOWN), _signal(SignalKind.MODEL_MISMATCH)], ctx)
    assert [d.cause for d in found] == [Cause.SERVING_DOWN, Cause.MODEL_MISMATCH]


def test_an_output_shift_while_a_mismatch_is_open_is_the_mismatch_not_drift() -> None:
    shift = [_signal(SignalKind.PREDICTION_DRIFT)]
    now = datetime.now(UTC)
    assert [d.cause for d in diagnose(shift, Context(now=now))] == [Cause.DATA_DRIFT]
    assert [d.cause for d in diagnose(shift, Context(now=now, model_mismatch_open=True))] == [Cause.MODEL_MISMATCH]
    inputs_too = [*shift, _signal(SignalKind.DATA_DRIFT)]  # shifted inputs stay drift's
    found = diagnose(inputs_too, Context(now=now, model_mismatch_open=True))
    assert {(d.cause, s.kind) for d in found for s in d.signals} == {
        (Cause.MODEL_MISMATCH, SignalKind.PREDICTION_DRIFT),
        (Cause.DATA_DRIFT, SignalKind.DATA_DRIFT),
    }


def test_the_sample_keeps_every_label_and_its_size() -> None:
    frame = pd.DataFrame({"x": range(1000), TARGET: [1 if i % 50 == 0 else 0 for i in range(1000)]})
    sample = stratified_sample(frame, TARGET, "binary", rows=100, seed=7)
    assert len(sample) == 100 and set(sample[TARGET]) == {0, 1}
    assert sample.equals(stratified_sample(frame, TARGET, "binary", rows=100, seed=7))


def test_a_verdict_is_recorded_only_when_it_changes(tmp_path: Path) -> None:
    lake, t0 = Lake(tmp_path / "lake"), datetime.now(UTC)
    for seconds, passed in ((0, True), (1, True), (2, False), (3, False), (4, True)):
        record_probe(lake, GoldenProbe("3", t0 + timedelta(seconds=seconds), passed, 10, 0 if passed else 10, "3"))
    assert lake.read("golden_probes").num_rows == 3
    assert latest_probe(lake, "3").passed and latest_probe(lake, "4") is None  # type: ignore[union-attr]


def test_the_monitor_leaves_the_replays_out_of_the_live_traffic() -> None:
    from flows.monitor.passes import _without_golden_probes

    rows = pa.table({"_request_id": ["a1:0", "golden-probe-3f:0", None, "golden-probe-3f:1"], "x": [1, 2, 3, 4]})
    assert _without_golden_probes(rows).column("x").to_pylist() == [1, 3]  # type: ignore[union-attr]


def test_the_probe_runs_once_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SelfhealConfig(
        home=str(tmp_path),
        lake={"root": str(tmp_path / "lake")},
        serving={"url": "http://127.0.0.1:9"},
        golden={"enabled": True, "interval_seconds": 3600},
    )
    ctx = HealContext(cfg, None, Lake(tmp_path / "lake"), Registry(cfg.tracking_uri, cfg.model_name))
    calls: list[int] = []
    monkeypatch.setattr(golden, "replay_golden", lambda ctx: (calls.append(1), (None, "test"))[1])
    now = datetime.now(UTC)
    golden.probe_golden(ctx, now)
    golden.probe_golden(ctx, now)
    assert len(calls) == 1


# -- a served model swapped on disk, caught and repaired ----------------------------------------
def _register(cfg: SelfhealConfig) -> tuple[Registry, pd.DataFrame]:
    """v1 (gradient boosting) and v2 (logistic regression) of one model, both with a frozen golden set."""
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from serving.modelio import log_sklearn_model, mlflow_uris

    X, y = _training_frame()
    numeric = [c for c in X.columns if c != "segment"]
    with mlflow_uris(cfg.tracking_uri):
        experiment = mlflow.create_experiment("golden", artifact_location=Path(cfg.artifact_root).as_uri())
        for final in (HistGradientBoostingClassifier(max_iter=20), LogisticRegression(max_iter=2000)):
            with mlflow.start_run(experiment_id=experiment):
                log_sklearn_model(_pipeline(final, numeric).fit(X, y), X.head(5), registered_model_name=cfg.model_name)
    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    lake = Lake(cfg.lake.root)
    holdout = X.assign(**{TARGET: y})
    sample = stratified_sample(holdout, TARGET, "binary", cfg.golden.rows, seed=1)
    for version in ("1", "2"):
        registry.promote(version)
        assert freeze(cfg, lake, registry, version, sample, "test holdout") == len(sample)
    return registry, holdout


def _model_file(registry: Registry, version: str) -> Path:
    source = registry.source(registry.version(version))
    return Path(source.removeprefix("file://")) / "model.skops"


def test_a_model_swapped_on_disk_is_caught_by_the_golden_probe_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFHEAL_ADMIN_TOKEN", ADMIN_TOKEN)
    port = processes.free_port()
    cfg = SelfhealConfig(
        home=str(tmp_path),
        lake={"root": str(tmp_path / "lake")},
        landing={"path": str(tmp_path / "landing")},
        serving={"url": f"http://127.0.0.1:{port}"},
        golden={"enabled": True, "rows": 60, "interval_seconds": 1.0},
    )
    Path(cfg.landing.path).mkdir(parents=True)
    registry, _ = _register(cfg)
    env = _serving_env.server_env(cfg.tracking_uri, cfg.model_name, ADMIN_TOKEN, Path(cfg.lake.root), tmp_path)
    server: LiveServer = launch(env, port, tmp_path, Path(cfg.lake.root), workers=1)
    ctx = make_context(cfg, None)
    healer = Healer(ctx, IncidentLog(ctx.lake))
    try:
        # Untouched: the replay passes, nothing opens.
        observation = observe(ctx, datetime.now(UTC), run_monitor=False)
        assert not observation.signals, [s.summary() for s in observation.signals]
        assert latest_probe(ctx.lake, "2").passed  # type: ignore[union-attr]  # the probe ran
        assert healer.tick(observation) == [] and healer.log.incidents() == []

        # v2's artifact replaced by v1's on disk; the restarted server serves "v2", green everywhere.
        shutil.copyfile(_model_file(registry, "1"), _model_file(registry, "2"))
        server.stop()
        server = launch(env, port, tmp_path, Path(cfg.lake.root), workers=1)
        assert ctx.server.ready()["model_version"] == "2"

        cfg.golden.enabled = False  # without the probe nothing notices
        assert observe(ctx, datetime.now(UTC), run_monitor=False).signals == []
        cfg.golden.enabled = True

        # Served outputs shifting under unchanged inputs replay the set at once, ahead of its interval.
        ctx.probed_at["golden"] = time.monotonic()
        shift = _signal(SignalKind.PREDICTION_DRIFT)
        [early] = _replay_on_output_shift(ctx, [], [shift], datetime.now(UTC))
        assert early.kind == SignalKind.MODEL_MISMATCH, early.summary()
        assert _replay_on_output_shift(ctx, [], [shift, _signal(SignalKind.DATA_DRIFT)], datetime.now(UTC)) == []
        ctx.probed_at.pop("golden")

        observation = observe(ctx, datetime.now(UTC), run_monitor=False)  # the first look after the swap
        [mismatch] = observation.signals
        assert mismatch.kind == SignalKind.MODEL_MISMATCH, mismatch.summary()
        assert mismatch.evidence["served_version"] == "2" and mismatch.evidence["differing"] > 0
        with pytest.raises(UnhealthyChampion, match="golden replay failed"):
            load_champion(cfg)  # batch scoring refuses the champion meanwhile

        # The monitor made v2's prediction reference from the swapped model's first window.
        for version, score in (("1", 0.2), ("2", 0.9)):
            made = pa.table({"_prediction": [1.0] * 5, "_score": [score] * 5, "model_version": [version] * 5})
            ctx.lake.append(PREDICTION_REFERENCE, made)

        healer.tick(observation)
        deadline = time.monotonic() + 60
        while healer.log.open_incidents() and time.monotonic() < deadline:
            time.sleep(0.2)
            healer.tick(observe(ctx, datetime.now(UTC), run_monitor=False))
        [incident] = healer.log.incidents()
        assert incident.cause == "model_mismatch" and incident.state == State.RESOLVED, incident.last.detail
        # A reload keeps the loaded (swapped) model: its replay still differs, so the rollback repairs.
        assert incident.remedies_tried == ["restart_serving", "rollback"]
        assert incident.failed_remedies == ["restart_serving"]
        assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]
        assert registry.by_alias(PREVIOUS).version == "1"  # type: ignore[union-attr]  # never the swapped one
        replay, why = golden.replay_golden(ctx)
        assert replay is not None and replay.passed and replay.version == "1", why
        assert latest_probe(ctx.lake, "1").passed  # type: ignore[union-attr]
        load_champion(cfg).close()  # the gate lets the repaired champion score
        # v2's reference was the swapped model's: dropped, so the registered v2 (once it serves
        # again) makes its own instead of reading as prediction drift; v1's is kept.
        kept = ctx.lake.read(PREDICTION_REFERENCE)
        assert set(kept.column("model_version").to_pylist()) == {"1"}
        # ... from its rows served from now on only (the monitor's next window may hold the swapped ones).
        assert ctx.lake.read(PREDICTION_REFERENCE_RESETS).column("model_version").to_pylist() == ["2"]
    finally:
        server.stop()
