"""Diagnosis: ordered rules from signals to a cause, with the evidence kept.

The rules form a decision list: the first rule that matches claims the signals
it explains; what is left goes to the next rule. The order encodes which
explanation wins when several fit (a dead server explains missing metrics; a
drop in quality right after a promotion is the deploy's fault, not drift's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from flows.monitor.signals import Severity, Signal, SignalKind


class Cause(StrEnum):
    SERVING_DOWN = "serving_down"
    UPSTREAM_OUTAGE = "upstream_outage"
    BAD_DEPLOY = "bad_deploy"
    DATA_QUALITY = "data_quality"
    CONCEPT_DRIFT = "concept_drift"
    DATA_DRIFT = "data_drift"
    LATENCY = "latency"
    STALE_DATA = "stale_data"
    LAKE_CORRUPTED = "lake_corrupted"
    MODEL_MISMATCH = "model_mismatch"
    OUTPUT_DELIVERY = "output_delivery"


@dataclass(frozen=True)
class Context:
    """What diagnosis knows besides the signals."""

    now: datetime
    promoted_at: datetime | None = None
    """When the current champion was promoted (None: unknown)."""
    bad_deploy_window: timedelta = timedelta(minutes=30)
    healthy_since_promotion: bool = False
    """The champion had a labeled window at its baseline quality after it was promoted:
    a later drop is the world changing (drift), not the deploy."""
    model_mismatch_open: bool = False
    """An incident says the server answers the golden set otherwise than the champion: the served
    model's output shifts, errors and quality drops are that fault's symptoms, whether or not this
    observation replayed the set (it does so once per ``golden.interval_seconds``)."""
    inputs_drifted: bool = False
    """The inputs shifted: a drift signal, or a quality signal whose labeled predictions'
    inputs the monitor found drifted (its ``inputs_drifted`` evidence). ``diagnose`` sets it."""

    @property
    def recently_promoted(self) -> bool:
        return self.promoted_at is not None and self.now - self.promoted_at <= self.bad_deploy_window


@dataclass(frozen=True)
class Diagnosis:
    """A cause and the signals that point to it."""

    cause: Cause
    signals: tuple[Signal, ...]
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_evidence(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "signals": [s.to_dict() for s in self.signals],
            **self.evidence,
        }


Rule = tuple[str, Cause, Callable[[set[SignalKind], Context], set[SignalKind]]]


def _when(*kinds: SignalKind) -> Callable[[set[SignalKind], Context], set[SignalKind]]:
    wanted = set(kinds)
    return lambda present, ctx: present & wanted


def _inputs_shifted(present: set[SignalKind], ctx: Context) -> bool:
    return SignalKind.DATA_DRIFT in present or ctx.inputs_drifted


def _after_promotion(present: set[SignalKind], ctx: Context) -> set[SignalKind]:
    symptoms = {
        SignalKind.PERFORMANCE_DROP,
        SignalKind.ERROR_RATE,
        SignalKind.BREAKER_OPEN,
        SignalKind.PREDICTION_DRIFT,
    }
    if not ctx.recently_promoted or ctx.healthy_since_promotion or _inputs_shifted(present, ctx):
        return set()
    return present & symptoms


def _served_model_differs(present: set[SignalKind], ctx: Context) -> set[SignalKind]:
    # A server answering the golden set otherwise than the registered champion explains the
    # quality, error and output-shift symptoms of the same observation, and of later ones while
    # its incident is open: they are not a separate deploy fault, nor drift.
    if SignalKind.MODEL_MISMATCH not in present and not ctx.model_mismatch_open:
        return set()
    symptoms = {
        SignalKind.PERFORMANCE_DROP,
        SignalKind.ERROR_RATE,
        SignalKind.BREAKER_OPEN,
        SignalKind.PREDICTION_DRIFT,
    }
    return present & ({SignalKind.MODEL_MISMATCH} | symptoms)


def _quality_issues(present: set[SignalKind], ctx: Context) -> set[SignalKind]:
    # New categories or missing values *with* a distribution shift are the shift's symptoms.
    return set() if SignalKind.DATA_DRIFT in present else present & {SignalKind.DATA_QUALITY}


def _quality_without_input_shift(present: set[SignalKind], ctx: Context) -> set[SignalKind]:
    # Concept drift is P(y|x) changing: errors rise while the inputs stay put. Errors that
    # rise with shifted inputs are the covariate shift's symptom (the data-drift rule's).
    if _inputs_shifted(present, ctx):
        return set()
    return present & {SignalKind.CONCEPT_DRIFT, SignalKind.PERFORMANCE_DROP}


RULES: tuple[Rule, ...] = (
    ("the server does not answer", Cause.SERVING_DOWN, _when(SignalKind.SERVING_DOWN)),
    ("tracking store, lake or landing zone unreachable", Cause.UPSTREAM_OUTAGE, _when(SignalKind.UPSTREAM_OUTAGE)),
    ("a stage table's newest commit is torn", Cause.LAKE_CORRUPTED, _when(SignalKind.LAKE_CORRUPTED)),
    # Whatever the quality says: a champion the server will not load is a deploy that must be undone.
    ("the server refused to load the champion", Cause.BAD_DEPLOY, _when(SignalKind.MODEL_REFUSED)),
    (
        "the server answers the golden set otherwise than the registered champion",
        Cause.MODEL_MISMATCH,
        _served_model_differs,
    ),
    ("quality or errors bad from the first windows after a promotion", Cause.BAD_DEPLOY, _after_promotion),
    ("batches or features fail data expectations", Cause.DATA_QUALITY, _quality_issues),
    ("labels disagree with an unchanged input distribution", Cause.CONCEPT_DRIFT, _quality_without_input_shift),
    (
        "input or output distributions shifted",
        Cause.DATA_DRIFT,
        _when(
            SignalKind.DATA_DRIFT,
            SignalKind.PREDICTION_DRIFT,
            SignalKind.PERFORMANCE_DROP,
            SignalKind.CONCEPT_DRIFT,
            SignalKind.DATA_QUALITY,
        ),
    ),
    ("latency above its adaptive band", Cause.LATENCY, _when(SignalKind.LATENCY)),
    (
        "server errors or an open breaker without a recent deploy",
        Cause.SERVING_DOWN,
        _when(SignalKind.ERROR_RATE, SignalKind.BREAKER_OPEN),
    ),
    ("data stopped arriving or arrives short", Cause.STALE_DATA, _when(SignalKind.STALE_DATA, SignalKind.MISSING_ROWS)),
    (
        "batch predictions wait in the dead-letter queue after a failed write or model call",
        Cause.OUTPUT_DELIVERY,
        _when(SignalKind.OUTPUT_DELIVERY),
    ),
)


def diagnose(signals: Sequence[Signal], ctx: Context) -> list[Diagnosis]:
    """Map signals (WARNING and above) to causes, first matching rule first.

    Example:
        >>> [d.cause for d in diagnose([drift_signal], Context(now))]
        [<Cause.DATA_DRIFT: 'data_drift'>]
    """
    actionable = [s for s in signals if s.severity.rank >= Severity.WARNING.rank]
    if any(s.evidence.get("inputs_drifted") is True for s in actionable):
        ctx = replace(ctx, inputs_drifted=True)
    remaining = {s.kind for s in actionable}
    found: dict[Cause, Diagnosis] = {}
    for rule, cause, match in RULES:
        claimed = match(remaining, ctx)
        if not claimed:
            continue
        remaining -= claimed
        mine = tuple(s for s in actionable if s.kind in claimed)
        if cause in found:  # a second rule for the same cause adds its signals
            prev = found[cause]
            found[cause] = Diagnosis(cause, prev.signals + mine, prev.rule)
        else:
            extra = (
                {"promoted_at": ctx.promoted_at.isoformat()} if cause == Cause.BAD_DEPLOY and ctx.promoted_at else {}
            )
            found[cause] = Diagnosis(cause, mine, rule, extra)
    return list(found.values())
