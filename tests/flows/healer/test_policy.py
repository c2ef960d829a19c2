"""The learned remedy policy (issue 19) on the real healer, incident log and decisions log.

The sandbox world: one cause (``data_quality``) whose best remedy depends on a context
feature, the fault's effect size. ``reuse_previous`` (fast) repairs only a small fault;
``refit`` (slow: it sleeps ``SLOW`` seconds, as a retrain takes time) repairs any. The
rules try ``refit`` first, always. Every step is a real healer tick writing to a real
Delta lake; MTTRs are the incident log's own.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkpoints.decisions import DecisionLog
from checkpoints.incidents import Incident, IncidentLog, State
from flows.config import SelfhealConfig
from flows.healer import policy
from flows.healer.machine import Healer, Observation, make_context
from flows.healer.remedies import REMEDIES, HealContext, Outcome, Remedy
from flows.monitor.signals import Severity, Signal, SignalKind, Window

SLOW = 1.5
SMALL, LARGE = 0.2, 1.5
CAUSE = "data_quality"


@dataclass
class World:
    broken: bool = False
    effect: float = 0.0


WORLD = World()


class ReusePrevious(Remedy):
    """Fast; repairs only a small fault (the previous model was trained on similar data)."""

    name = "reuse_previous"

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        if WORLD.effect < policy.LARGE_EFFECT:
            WORLD.broken = False
        return Outcome(True, "reused the previous model")

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        return Outcome(not WORLD.broken, "repaired" if not WORLD.broken else "still broken")


class Refit(Remedy):
    """Slow; repairs any fault."""

    name = "refit"

    def apply(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], key: str) -> Outcome:
        time.sleep(SLOW)
        WORLD.broken = False
        return Outcome(True, "refitted")

    def verify(self, ctx: HealContext, incident: Incident, plan: dict[str, Any], since: datetime) -> Outcome:
        return Outcome(not WORLD.broken, "repaired" if not WORLD.broken else "still broken")


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setitem(REMEDIES, ReusePrevious.name, ReusePrevious)
    monkeypatch.setitem(REMEDIES, Refit.name, Refit)
    WORLD.broken, WORLD.effect = False, 0.0
    yield WORLD


def _config(home: Path, **healing: Any) -> SelfhealConfig:
    """A healer's config; each phase of a test has its own home and lake (a log that grows slows every tick)."""
    return SelfhealConfig(
        home=str(home),
        lake={"root": str(home / "lake")},
        healing={"policy": {CAUSE: ["refit", "reuse_previous"]}, "escalation_hold_seconds": 0, **healing},
    )


def _healer(cfg: SelfhealConfig, seed: int = 0) -> Healer:
    ctx = make_context(cfg, None)
    return Healer(ctx, IncidentLog(ctx.lake), rng=random.Random(seed))


def _fault_signal(effect: float) -> Signal:
    now = datetime.now(UTC)
    return Signal(
        SignalKind.DATA_QUALITY, Severity.CRITICAL, {"effect_size": effect}, Window(now - timedelta(seconds=1), now)
    )


def _incident(healer: Healer, effect: float) -> Incident:
    """Inject a fault of size ``effect`` and tick until its incident closes."""
    WORLD.broken, WORLD.effect = True, effect
    before = {i.id for i in healer.log.incidents()}
    for _ in range(40):
        signals = [_fault_signal(effect)] if WORLD.broken else []
        healer.tick(Observation(datetime.now(UTC), signals))
        new = [i for i in healer.log.incidents() if i.id not in before]
        if new and new[0].state.closed:
            return new[0]
    raise AssertionError(f"no incident closed: {healer.log.incidents()[-1].last}")


def _first_remedy(incident: Incident) -> str:
    return next(t.remedy for t in incident.transitions if t.state == State.HEALING and t.remedy)


def _faster(effect: float) -> str:
    return "reuse_previous" if effect < policy.LARGE_EFFECT else "refit"


def _effects(n: int, seed: int) -> list[float]:
    effects = [SMALL, LARGE] * (n // 2)
    random.Random(seed).shuffle(effects)
    return effects


def test_explored_incidents_teach_the_faster_remedy_per_context_and_the_estimate_agrees(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1. Exploration, in the sandbox only: uniform random choices among the allowed remedies.
    monkeypatch.setenv(policy.SANDBOX_ENV, str(tmp_path))
    sandbox = _config(tmp_path / "sandbox", policy_mode="learned", learning={"explore_epsilon": 1.0})
    explore = _healer(sandbox, seed=7)
    explored = [_incident(explore, e) for e in _effects(24, seed=1)]
    assert all(i.state == State.RESOLVED for i in explored)
    log = DecisionLog(explore.ctx.lake)
    firsts = policy.first_choices(log.decisions())
    assert len(firsts) == 24 and {d.propensity for d in firsts} == {0.5}
    assert {d.chosen for d in firsts} == {"refit", "reuse_previous"}

    # 2. Offline training and off-policy evaluation from the decisions log alone.
    learned_cfg = _config(tmp_path / "learned", policy_mode="learned")
    table = policy.PolicyTable.train(learned_cfg, log.decisions())
    table.evaluation = policy.evaluate(learned_cfg, table, log.decisions())
    assert table.better, table.evaluation

    # 3. Held out, outside the sandbox (no exploration): the learned policy, then the rules, on the same faults.
    monkeypatch.delenv(policy.SANDBOX_ENV)
    held_out = _effects(10, seed=2)
    learned = _healer(learned_cfg)
    table.save(learned.ctx.lake)
    by_learned = [_incident(learned, e) for e in held_out]
    rules = _healer(_config(tmp_path / "rules", policy_mode="rules"))
    table.save(rules.ctx.lake)
    by_rules = [_incident(rules, e) for e in held_out]

    right = sum(_first_remedy(i) == _faster(e) for i, e in zip(by_learned, held_out, strict=True))
    learned_mttr = statistics.mean(i.mttr_seconds or 0 for i in by_learned)
    rules_mttr = statistics.mean(i.mttr_seconds or 0 for i in by_rules)
    estimate = table.evaluation["learned"]
    with capsys.disabled():  # the figures, in the log even when the test passes
        print(  # noqa: T201
            f"\nlearned picks the faster remedy in {right}/{len(held_out)}; mean MTTR learned {learned_mttr:.3f} s, "
            f"rules {rules_mttr:.3f} s; OPE {estimate['mean_mttr']:.3f} s "
            f"[{estimate['low']:.3f}, {estimate['high']:.3f}]"
        )
    assert right >= 0.9 * len(held_out)
    assert all(_first_remedy(i) == "refit" for i in by_rules)  # the rules are unchanged by a trained table
    assert all(i.state == State.RESOLVED for i in by_learned + by_rules)
    assert learned_mttr < rules_mttr
    assert estimate["low"] <= learned_mttr <= estimate["high"]

    # The same through the command line, on the sandbox's log: train, evaluate, show.
    config = _write(sandbox, tmp_path / "sandbox.yaml")
    capsys.readouterr()
    assert _cli(config, "policy", "train") == 0 and _cli(config, "policy", "evaluate") == 0
    assert _cli(config, "policy", "show") == 0
    out = capsys.readouterr().out
    assert f"trained on {len(log.decisions('remedy'))} remedy outcome(s)" in out and "better than the rules" in out
    assert f"{CAUSE} [severity=critical,effect=small," in out and ": reuse_previous (learned: " in out


def test_without_data_or_outside_the_sandbox_the_learned_mode_keeps_the_rules(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(policy.SANDBOX_ENV, raising=False)
    healer = _healer(_config(tmp_path, policy_mode="learned", learning={"explore_epsilon": 1.0}))
    incidents = [_incident(healer, e) for e in (SMALL, SMALL, LARGE)]
    assert [_first_remedy(i) for i in incidents] == ["refit"] * 3
    decisions = DecisionLog(healer.ctx.lake).decisions("remedy")
    assert [(d.chooser, d.propensity, d.explored) for d in decisions] == [("rules", 1.0, False)] * 3
    assert all(d.note == "no learned policy yet (selfheal policy train)" for d in decisions)


# -- people in the loop: approve, veto, pin (through the command line) --------------------------
def _cli(config: Path, *argv: str) -> int:
    from flows.cli import main

    return main(["--config", str(config), *argv])


def _write(cfg: SelfhealConfig, path: Path) -> Path:
    import yaml

    data = cfg.model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _tick(healer: Healer, effect: float = LARGE) -> Incident:
    healer.tick(Observation(datetime.now(UTC), [_fault_signal(effect)] if WORLD.broken else []))
    return healer.log.incidents()[-1]


def test_a_remedy_that_needs_approval_waits_with_the_clock_running_and_a_veto_is_never_applied(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(policy.SANDBOX_ENV, raising=False)
    cfg = _config(tmp_path, approval={"refit": "approve", "reuse_previous": "approve"})
    config = _write(cfg, tmp_path / "selfheal.yaml")
    healer = _healer(cfg)
    WORLD.broken, WORLD.effect = True, LARGE
    incident = _tick(healer)
    assert incident.state == State.AWAITING_APPROVAL and "refit" in incident.last.detail
    _tick(healer)
    time.sleep(0.3)
    assert _tick(healer).state == State.AWAITING_APPROVAL  # no approval: nothing runs
    assert WORLD.broken
    capsys.readouterr()
    assert _cli(config, "incidents") == 0
    [listed] = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(incident.id)]
    assert listed[1:3] == [CAUSE, "AWAITING_APPROVAL"]

    # A veto of the proposed remedy: it is dropped, the next allowed one is proposed.
    assert _cli(config, "incidents", "veto", incident.id, "--remedy", "refit", "--by", "ana") == 0
    incident = _tick(healer)
    assert incident.state == State.AWAITING_APPROVAL and incident.proposal is not None
    assert incident.proposal.evidence["proposed"] == "reuse_previous"
    # Approving the vetoed one instead is refused; approving the proposal runs it.
    assert _cli(config, "incidents", "approve", incident.id, "--remedy", "refit") == 1
    assert _cli(config, "incidents", "approve", incident.id, "--by", "ana") == 0
    for _ in range(10):
        incident = _tick(healer)
        if incident.state.closed:
            break
    # reuse_previous cannot repair a large fault and refit is vetoed: escalated, refit never applied.
    assert incident.state == State.ESCALATED, incident.last.detail
    assert incident.remedies_tried == ["reuse_previous"]
    waited = next(t.ts for t in incident.transitions if t.evidence.get("approved")) - incident.detected_at
    assert waited.total_seconds() >= 0.3  # the approval wait is inside the incident's time, not outside it
    said = DecisionLog(healer.ctx.lake).decisions()
    assert [(d.kind, d.chosen, d.by) for d in said if d.kind != "remedy"] == [
        ("veto", "refit", "ana"),
        ("approve", "reuse_previous", "ana"),
    ]
    [chosen] = [d for d in said if d.kind == "remedy"]
    assert (chosen.chosen, chosen.outcome, chosen.candidates) == ("reuse_previous", "escalated", ["reuse_previous"])


def test_a_pin_overrides_the_rules_until_unpinned_and_only_within_the_allowed_remedies(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(policy.SANDBOX_ENV, raising=False)
    cfg = _config(tmp_path)
    config = _write(cfg, tmp_path / "selfheal.yaml")
    assert _cli(config, "policy", "pin", CAUSE, "restart_serving") == 1  # not in healing.policy.data_quality
    assert _cli(config, "policy", "pin", CAUSE, "reuse_previous", "--by", "ana") == 0
    healer = _healer(cfg)
    pinned = _incident(healer, SMALL)
    assert _cli(config, "policy", "unpin", CAUSE) == 0
    unpinned = _incident(healer, SMALL)
    assert (_first_remedy(pinned), _first_remedy(unpinned)) == ("reuse_previous", "refit")
    chosen = DecisionLog(healer.ctx.lake).decisions("remedy")
    assert [(d.chooser, d.note) for d in chosen] == [("person", f"pinned for {CAUSE}"), ("rules", "")]


def test_the_context_buckets_read_the_evidence_and_the_lake(tmp_path: Path) -> None:
    from checkpoints import Lake
    from checkpoints.metrics import append_metric_rows

    drift = {"severity": "warning", "evidence": {"features": {"amount": {"effect_size": 0.7}}, "drift_share": 0.2}}
    drop = {"severity": "critical", "evidence": {"worse_by": 0.04}}
    assert (policy.effect_bucket({"signals": [drift]}), policy.severity_bucket({"signals": [drift]})) == (
        "large",
        "warning",
    )
    assert policy.effect_bucket({"signals": [drop]}) == "small"
    assert policy.effect_bucket({"signals": [{"evidence": {"features": ["amount"]}}]}) == "n/a"
    lake, now = Lake(str(tmp_path / "lake")), datetime.now(UTC)
    assert policy.labels_bucket(lake, "roc_auc", now) == "none"
    old = {"ts": now - timedelta(hours=3), "name": "performance.roc_auc", "value": 0.9}
    append_metric_rows(lake, [old], key="old")
    assert policy.labels_bucket(lake, "roc_auc", now) == "none"
    append_metric_rows(lake, [{**old, "ts": now - timedelta(minutes=5)}], key="new")
    assert policy.labels_bucket(lake, "roc_auc", now) == "fresh"
    assert policy.model_bucket(lambda: now - timedelta(hours=2), now) == "new"
    assert policy.model_bucket(lambda: now - timedelta(days=3), now) == "old"
    assert policy.model_bucket(lambda: None, now) == "unknown"
