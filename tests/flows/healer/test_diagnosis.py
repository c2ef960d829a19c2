"""Diagnosis: signals to causes, by rules in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flows.healer.diagnosis import Cause, Context, diagnose
from flows.monitor.signals import Severity, Signal, SignalKind, Window


def _signal(kind: SignalKind, severity: Severity = Severity.CRITICAL, **evidence: Any) -> Signal:
    now = datetime.now(UTC)
    return Signal(kind, severity, evidence or {"x": 1}, Window(now - timedelta(seconds=5), now))


def test_diagnosis_rules_in_order() -> None:
    now = datetime.now(UTC)
    ctx = Context(now=now)
    assert [d.cause for d in diagnose([_signal(SignalKind.DATA_DRIFT)], ctx)] == [Cause.DATA_DRIFT]
    assert [d.cause for d in diagnose([_signal(SignalKind.PERFORMANCE_DROP)], ctx)] == [Cause.CONCEPT_DRIFT]
    both = diagnose([_signal(SignalKind.PERFORMANCE_DROP), _signal(SignalKind.DATA_DRIFT)], ctx)
    assert [d.cause for d in both] == [Cause.DATA_DRIFT]
    just_promoted = Context(now=now, promoted_at=now - timedelta(minutes=2))
    assert [d.cause for d in diagnose([_signal(SignalKind.PERFORMANCE_DROP)], just_promoted)] == [Cause.BAD_DEPLOY]
    down = diagnose([_signal(SignalKind.SERVING_DOWN), _signal(SignalKind.LATENCY)], ctx)
    assert [d.cause for d in down] == [Cause.SERVING_DOWN, Cause.LATENCY]
    assert diagnose([_signal(SignalKind.DATA_DRIFT, Severity.INFO)], ctx) == []
    # A model that was fine after its promotion and then degrades meets drift, not a bad deploy.
    was_fine = Context(now=now, promoted_at=now - timedelta(minutes=2), healthy_since_promotion=True)
    assert [d.cause for d in diagnose([_signal(SignalKind.PERFORMANCE_DROP)], was_fine)] == [Cause.CONCEPT_DRIFT]
    # New categories alongside a shift are the shift's symptoms; alone they are a quality problem.
    shifted = diagnose([_signal(SignalKind.DATA_QUALITY), _signal(SignalKind.DATA_DRIFT)], ctx)
    assert [d.cause for d in shifted] == [Cause.DATA_DRIFT]
    assert [d.cause for d in diagnose([_signal(SignalKind.DATA_QUALITY)], ctx)] == [Cause.DATA_QUALITY]


def test_errors_rising_on_shifted_inputs_are_data_drift_not_concept_drift() -> None:
    """Concept drift is P(y|x) changing: the labels disagree while the inputs stay put."""
    ctx = Context(now=datetime.now(UTC))
    for kind in (SignalKind.CONCEPT_DRIFT, SignalKind.PERFORMANCE_DROP):
        unchanged = _signal(kind, inputs_drifted=False, input_drifted_features=[])
        assert [d.cause for d in diagnose([unchanged], ctx)] == [Cause.CONCEPT_DRIFT]
        shifted = _signal(kind, inputs_drifted=True, input_drifted_features=["amount"])
        assert [d.cause for d in diagnose([shifted], ctx)] == [Cause.DATA_DRIFT]
        # One incident for one fault: the CUSUM alarm and the drift window agree on the cause.
        both = diagnose([_signal(kind), _signal(SignalKind.DATA_DRIFT)], ctx)
        assert [(d.cause, len(d.signals)) for d in both] == [(Cause.DATA_DRIFT, 2)]
    # Shifted inputs are not a bad deploy either, even right after a promotion.
    just_promoted = Context(now=ctx.now, promoted_at=ctx.now - timedelta(minutes=1))
    shifted = _signal(SignalKind.PERFORMANCE_DROP, inputs_drifted=True)
    assert [d.cause for d in diagnose([shifted], just_promoted)] == [Cause.DATA_DRIFT]


def test_a_refused_champion_is_a_bad_deploy_whenever_it_was_promoted() -> None:
    """The server will not load it: no quality window can judge it, the deploy itself is the fault."""
    now = datetime.now(UTC)
    long_ago = Context(now=now, promoted_at=now - timedelta(days=2), healthy_since_promotion=True)
    [found] = diagnose([_signal(SignalKind.MODEL_REFUSED, refused={"version": "7"})], long_ago)
    assert found.cause == Cause.BAD_DEPLOY and found.rule == "the server refused to load the champion"
