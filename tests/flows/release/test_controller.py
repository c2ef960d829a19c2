"""The release analysis' rules: conditions, Argo-style verdicts, canary steps, routing (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.conditions import holds, parse
from flows.config import ReleaseConfig, SelfhealConfig
from flows.release.analysis import Measurement, judge, tally
from flows.release.controller import _next_share
from serving.release import ReleaseState, routes_to_challenger


def test_conditions_are_arithmetic_over_the_measured_names() -> None:
    values = {"challenger": 12.0, "champion": 10.0, "result": 2.0}
    assert holds("challenger <= champion * 1.25 + 5", values)
    assert holds("result > 1 and not result > 3", values)
    assert holds("abs(-result) == 2 and 0 < result <= max(2, 1)", values)
    assert not holds("result < 0 or challenger < champion", values)
    for bad in ("__import__('os')", "result.real > 0", "values['result'] > 0", "x > 1", "'a' < 'b'", "result >"):
        with pytest.raises(ValueError):
            parse(bad)


def test_config_refuses_a_bad_condition_and_accepts_argo_spelling() -> None:
    cfg = ReleaseConfig(metrics={"quality": {"successCondition": "result >= 0", "failureLimit": 2}})  # type: ignore[dict-item]
    assert cfg.metrics["quality"].success_condition == "result >= 0" and cfg.metrics["quality"].failure_limit == 2
    assert set(cfg.metrics) == {"error_rate", "latency_p99_ms", "prediction_distance", "quality"}
    with pytest.raises(ValueError, match="unknown name"):
        ReleaseConfig(metrics={"quality": {"failure_condition": "accuracy < 1"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown analysis metric"):
        ReleaseConfig(metrics={"throughput": {}})  # type: ignore[dict-item]


def _round(**phases: str) -> list[Measurement]:
    return [Measurement(metric, phase) for metric, phase in phases.items()]  # type: ignore[arg-type]


def test_verdicts_follow_failure_and_inconclusive_limits_then_count() -> None:
    config = ReleaseConfig(
        count=3,
        metrics={
            "error_rate": {"success_condition": "result <= 0", "failure_limit": 1},
            "latency_p99_ms": {"success_condition": "result <= 0", "inconclusive_limit": 1},
            "prediction_distance": {"enabled": False},
            "quality": {"enabled": False},
        },  # type: ignore[dict-item]
    )
    counts = tally({}, _round(error_rate="failed", latency_p99_ms="inconclusive"))
    assert judge(counts, 1, config) == ("continue", "1/3 measurements, no limit exceeded")
    failed = tally(counts, _round(error_rate="failed", latency_p99_ms="successful"))
    assert judge(failed, 2, config)[0] == "failed"  # 2 failures > failure_limit 1, at once
    unsure = tally(counts, _round(error_rate="successful", latency_p99_ms="inconclusive"))
    assert judge(unsure, 2, config) == ("inconclusive", "latency_p99_ms inconclusive 2 time(s) (limit 1)")
    good = tally(tally(counts, _round(error_rate="successful")), _round(error_rate="successful"))
    assert judge(good, 3, config)[0] == "successful"


def test_the_canary_moves_one_step_per_step_seconds() -> None:
    cfg = SelfhealConfig(release={"steps": [0.1, 0.25, 0.5], "step_seconds": 30})  # type: ignore[arg-type]
    state = ReleaseState("r", "canary", "2", "1", 0.1, started_at=0.0, step_started_at=0.0, max_share=0.1)
    assert _next_share(cfg, state, 29.0) is None
    moved = _next_share(cfg, state, 30.0)
    assert moved is not None and (moved.step, moved.share, moved.max_share) == (1, 0.25, 0.25)
    last = ReleaseState("r", "canary", "2", "1", 0.5, step=2, step_started_at=0.0)
    assert _next_share(cfg, last, 999.0) is None


def test_routing_is_deterministic_and_near_the_share() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [i for i in ids if routes_to_challenger(i, 0.1)]
    assert chosen == [i for i in ids if routes_to_challenger(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert set(chosen) <= {i for i in ids if routes_to_challenger(i, 0.25)}  # a step up keeps who it had
    assert not any(routes_to_challenger(i, 0.0) for i in ids[:100]) and all(
        routes_to_challenger(i, 1.0) for i in ids[:100]
    )


def test_release_state_round_trips_through_its_tag() -> None:
    state = ReleaseState("r", "shadow", "3", "2", 1.0, counts={"quality": [1, 0, 2]})
    assert ReleaseState.from_tag(state.to_tag()) == state
    assert ReleaseState.from_tag("{not json") is None and ReleaseState.from_tag(None) is None
    assert state.routing and not state.evolve(status="rolled_back").routing


@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_releases_a_new_model_as_canary_instead_of_promoting_it(tmp_path: Path) -> None:
    from flows.config import load_config
    from flows.pipeline.flow import pipeline_flow
    from flows.registry import CHALLENGER, CHAMPION, Registry
    from flows.release.controller import read_state
    from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config

    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:400], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target, promote__target="canary", release__steps=[0.2, 0.5])
    first = pipeline_flow(str(config))
    assert first.outcome == "promoted"  # nothing to compare with: the first model is promoted directly
    write_batches(frame.iloc[400:], tmp_path / "landing", parts=2, start=2)
    second = pipeline_flow(str(config))
    assert second.outcome == "released", second.message
    cfg = load_config(config)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    champion, challenger = registry.by_alias(CHAMPION), registry.by_alias(CHALLENGER)
    assert champion is not None and champion.version == first.champion == second.champion
    assert challenger is not None and challenger.version != champion.version
    state = read_state(registry)
    assert state is not None and (state.mode, state.challenger, state.share) == ("canary", challenger.version, 0.2)
    assert pipeline_flow(str(config)).outcome in ("up-to-date", "released")  # no new data: no second release
    again = read_state(registry)
    assert again is not None and again.release_id == state.release_id
