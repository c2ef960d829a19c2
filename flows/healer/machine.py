"""The healer: an explicit state machine over the incident log.

Each tick: observe (a monitor pass plus the healer's own probes of the
tracking store, the landing zone, the quarantine, the dead-letter queue of batch
scoring (``flows.healer.dlq``), the server and, every
``golden.interval_seconds``, the champion's golden set replayed against it), diagnose
signals into causes, open or join incidents, then move every open incident
one or more steps::

    DETECTED -> DIAGNOSED -> HEALING -> VERIFYING -> RESOLVED
                    ^  |                    |
                    |  +-> AWAITING_APPROVAL (healing.approval: a person approves or vetoes)
                    +-- failed: next remedy-+        list exhausted -> ESCALATED

Which allowed remedy starts is the policy's choice (``flows.healer.policy``: the
rules' order, a pin, or the learned table); every choice is logged with its
context and, once the incident closes, its outcome (``checkpoints.decisions``).

The state lives in the ``incidents`` Delta table (``checkpoints.incidents``), so a
healer killed mid-HEALING is resumed by the next tick with the *same* plan and
idempotency key: the remedy changes things once. A lease per incident keeps
two healers from repairing the same incident at once. An incident resolves only
on fresh evidence: the remedy's own check (registry, lake, live server) AND a
later observation in which its cause is quiet.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from checkpoints import Lake
from checkpoints.decisions import DecisionLog
from checkpoints.exceptions import CheckpointCorrupted, CheckpointError, LakeUnreachable, RegistryUnavailable
from checkpoints.incidents import WAITING, Incident, IncidentLog, State, Transition, to_report
from checkpoints.leases import claim
from checkpoints.metrics import METRICS_TABLE, metric_values
from flows.config import SelfhealConfig
from flows.events import emit
from flows.healer import change, dlq, golden, policy
from flows.healer.diagnosis import Cause, Context, Diagnosis, diagnose
from flows.healer.remedies import (
    HealContext,
    Outcome,
    get_remedy,
    server_ready,
    torn_tables,
    tracking_store_error,
)
from flows.metrics import lower_is_better
from flows.monitor import inbox
from flows.monitor.detectors.thresholds import MonitorThresholds
from flows.monitor.passes import monitor_pass
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.pipeline.stages.ingest import LandingUnreachable, list_landing
from flows.registry import CHAMPION, STORE_ANSWER_SECONDS, Registry

logger = logging.getLogger(__name__)

_PROMOTING_REMEDIES = {"retrain", "rollback", "light_model"}
_QUALITY_KINDS = {SignalKind.PERFORMANCE_DROP, SignalKind.CONCEPT_DRIFT, SignalKind.PREDICTION_DRIFT}
#: Causes only the monitor's statistics reveal: verified on a window evaluated after the repair.
_MONITOR_CAUSES = {Cause.DATA_DRIFT, Cause.CONCEPT_DRIFT, Cause.BAD_DEPLOY, Cause.LATENCY, Cause.STALE_DATA}
#: Causes that resolve only when quality on post-repair labels is back near its pre-drift level.
_DRIFT_CAUSES = {Cause.DATA_DRIFT, Cause.CONCEPT_DRIFT}
#: Per cause, a proof every remedy's own verify must be joined by (the repair applied at the time given).
_CAUSE_PROOFS: dict[Cause, Callable[[HealContext, datetime], Outcome]] = {
    Cause.MODEL_MISMATCH: golden.verify_replay,  # only the golden set answered as frozen proves it
}
#: Per cause, what a resolution leaves to do (never raises).
_ON_RESOLVED: dict[Cause, Callable[[HealContext, Incident], None]] = {
    Cause.MODEL_MISMATCH: golden.forget_mismatched_reference,
}


# -- observation ------------------------------------------------------------------------
@dataclass
class Observation:
    """What one tick saw."""

    started_at: datetime
    signals: list[Signal] = field(default_factory=list)


def _probe_signal(kind: SignalKind, evidence: dict[str, Any], now: datetime) -> Signal:
    return Signal(kind, Severity.CRITICAL, evidence, Window(now - timedelta(seconds=1), now), source="healer")


def probe_upstream(ctx: HealContext, now: datetime) -> list[Signal]:
    """The tracking store and the landing zone answer?"""

    out = []
    error = tracking_store_error(ctx)
    if error is not None:
        out.append(_probe_signal(SignalKind.UPSTREAM_OUTAGE, {"tracking_store": error}, now))
    try:
        list_landing(ctx.cfg.landing.path, ctx.cfg.landing.format)
    except LandingUnreachable as exc:
        out.append(_probe_signal(SignalKind.UPSTREAM_OUTAGE, {"landing_zone": str(exc)}, now))
    return out


def probe_serving(ctx: HealContext, now: datetime) -> list[Signal]:
    """The configured server is ready, and loads the registry's champion (it refuses unsafe artifacts)?"""
    if not ctx.cfg.serving.url:
        return []
    ready = server_ready(ctx)
    if ready is None:
        return [_probe_signal(SignalKind.SERVING_DOWN, {"url": ctx.serving_url, "probe": "/ready"}, now)]
    refused = ready.get("refused")
    if refused:
        try:
            champion = ctx.registry.by_alias(CHAMPION)
        except RegistryUnavailable:  # the upstream probe reports the outage; the refusal is judged next tick
            return []
        # Still the champion? (after a rollback a worker may report the old refusal until its next refresh)
        if champion is not None and champion.version == str(refused.get("version")):
            return [_probe_signal(SignalKind.MODEL_REFUSED, {"refused": refused}, now)]
    return []


def probe_lake(ctx: HealContext, now: datetime) -> list[Signal]:
    """Every stage table reads? (A torn newest commit fails every pipeline run until it is set aside.)"""
    torn = torn_tables(ctx.lake)
    return [_probe_signal(SignalKind.LAKE_CORRUPTED, {"torn": torn}, now)] if torn else []


#: How far back a running healer reads the quarantine and the signal inbox again at each tick. A
#: pipeline run stamps a quarantined batch or a posted signal before its commit lands (67-150 ms
#: measured on a quiet machine, more on a busy one): a window starting at the last tick misses one
#: committed after that tick read it (CI missed a concept-drift signal so, and the scheduled run then
#: promoted a model fitted to the drifted data).
LATE_COMMIT_SECONDS = 120.0


@dataclass
class Delivered:
    """What a running healer already took from the quarantine and the inbox (they are read again for a while).

    Attributes:
        started_at: the healer's start: anything stamped before it is not delivered (as before a restart).
        keys: delivered items and when they were delivered.
    """

    started_at: datetime
    keys: dict[str, datetime] = field(default_factory=dict)

    def look_from(self, since: datetime) -> datetime:
        """Where this tick's reads of the quarantine and the inbox start."""
        return max(self.started_at, since - timedelta(seconds=LATE_COMMIT_SECONDS))

    def first_time(self, key: str, now: datetime) -> bool:
        """``key`` was not delivered yet (it is now); keys older than two lookbacks are forgotten."""
        if key in self.keys:
            return False
        bound = now - timedelta(seconds=2 * LATE_COMMIT_SECONDS)
        self.keys = {k: t for k, t in self.keys.items() if t > bound}
        self.keys[key] = now
        return True


def probe_quarantine(
    ctx: HealContext, since: datetime, now: datetime, delivered: Delivered | None = None
) -> list[Signal]:
    """Batches quarantined since ``since`` (and, given ``delivered``, not signalled before)."""
    fresh = [r for r in ctx.lake.quarantined() if r.quarantined_at > since]
    if delivered is not None:
        fresh = [r for r in fresh if delivered.first_time(f"quarantine:{r.sha256}:{r.quarantined_at.isoformat()}", now)]
    if not fresh:
        return []
    files = [{"source": r.source, "stored_at": r.stored_at, "reason": r.reason} for r in fresh]
    return [_probe_signal(SignalKind.DATA_QUALITY, {"quarantined": files}, now)]


# -- budget ------------------------------------------------------------------------------
def spent(cfg: SelfhealConfig, incidents: list[Incident], now: datetime) -> float:
    """What remedies started within the budget window cost."""
    start = now - timedelta(seconds=cfg.healing.budget_window_seconds)
    return sum(
        cfg.healing.costs.get(t.remedy or "", 0.0)
        for i in incidents
        for t in i.transitions
        if t.state == State.HEALING and t.ts >= start and not t.evidence.get(WAITING)
    )


# -- the state machine ---------------------------------------------------------------------
@dataclass
class Healer:
    """Moves incidents through their states. One instance per healer process."""

    ctx: HealContext
    log: IncidentLog
    decisions: DecisionLog = field(init=False)
    rng: random.Random = field(default_factory=random.Random)
    """Exploration's dice (inside the chaos sandbox only)."""
    _policy: tuple[int | None, policy.PolicyTable | None] | None = field(default=None, init=False)
    blind: dict[datetime, datetime] = field(default_factory=dict, init=False)
    """The lake outages this healer lived through (start -> end). It could not look then, so they
    do not count against a repair's ``verify_timeout_seconds``."""

    def __post_init__(self) -> None:
        self.decisions = DecisionLog(self.ctx.lake)

    def _looked_seconds(self, since: datetime) -> float:
        """Seconds from ``since`` to now, less the lake outages in between (the healer could not look)."""
        now = datetime.now(UTC)
        blind = sum(max(0.0, (min(end, now) - max(start, since)).total_seconds()) for start, end in self.blind.items())
        return (now - since).total_seconds() - blind

    @property
    def cfg(self) -> SelfhealConfig:
        return self.ctx.cfg

    def record(self, observation: Observation) -> list[Incident]:
        """Open or join incidents for what was observed; returns the touched incidents."""
        promoted_at, now = None, observation.started_at
        incidents = self.log.incidents()
        # A promotion the healer made itself (retrain, rollback) is judged by that incident's
        # verification, not blamed as a bad deploy while the repair is being verified.
        own_promotion = any(
            i.state in (State.HEALING, State.VERIFYING) and i.last.remedy in _PROMOTING_REMEDIES for i in incidents
        )
        signals = observation.signals
        healthy = False
        if not own_promotion and not any(s.kind == SignalKind.UPSTREAM_OUTAGE for s in signals):
            try:
                promoted_at = self.ctx.registry.promoted_at()
                healthy = promoted_at is not None and self.healthy_since(promoted_at)
                # A landed batch judged by a champion that passed the gate on data from before
                # it: a drop there is the data changing, not the deploy (the pipeline promotes
                # after every new batch, so the champion is nearly always recently promoted).
                healthy = healthy or any(s.source == "batch" and s.kind in _QUALITY_KINDS for s in signals)
            except RegistryUnavailable as exc:
                # The store went away after this tick's probe (its reads are bounded, so the
                # tick did not stall behind the lock): this is the outage, seen now.
                promoted_at = None
                signals = [*signals, _probe_signal(SignalKind.UPSTREAM_OUTAGE, {"tracking_store": str(exc)}, now)]
        if own_promotion:
            # Quality of the model the healer just promoted is that repair's verification,
            # not a new incident (which would roll it back before it is judged).
            signals = [s for s in signals if s.kind not in _QUALITY_KINDS]
        signals = _without_new_categories(signals)
        if self.cfg.healing.unfelt_drift == "observe":
            signals = _felt(signals)
        context = Context(
            now=observation.started_at,
            promoted_at=promoted_at,
            bad_deploy_window=timedelta(seconds=self.cfg.healing.bad_deploy_window_seconds),
            healthy_since_promotion=healthy,
            model_mismatch_open=any(i.cause == Cause.MODEL_MISMATCH and not i.state.closed for i in incidents),
        )
        touched = []
        for diagnosis in diagnose(signals, context):
            cause = diagnosis.cause.value
            incident = next((i for i in incidents if i.cause == cause and not i.state.closed), None)
            if incident is None and self._escalated_recently(incidents, diagnosis, observation.started_at):
                continue  # a person has it now: do not loop on the same cause
            if incident is None and _closed_since(incidents, cause, observation.started_at):
                continue  # seen before someone closed that incident: the next tick looks again
            touched.append(incident or self._open(diagnosis))
        return touched

    def _escalated_recently(self, incidents: list[Incident], diagnosis: Diagnosis, now: datetime) -> bool:
        """The same fault escalated a moment ago (new quarantined files are a new fault)."""
        hold = timedelta(seconds=self.cfg.healing.escalation_hold_seconds)
        files = {f["stored_at"] for s in diagnosis.signals for f in s.evidence.get("quarantined", [])}
        champion = None
        for i in incidents:
            held = i.state == State.ESCALATED and not i.acknowledged and now - i.last.ts < hold
            if i.cause != diagnosis.cause.value or not held:
                continue
            if champion is None:
                champion = self._champion_version()
            if champion is not None and i.last.evidence.get("champion", champion) != champion:
                continue  # another model serves now: a new fault, not the escalated one
            seen = {f["stored_at"] for f in i.evidence.get("quarantined", [])}
            if not files or files <= seen:
                return True
        return False

    def _champion_version(self) -> str | None:
        """The champion's version ("" when there is none), or None while the registry does not answer."""
        try:
            record = self.ctx.registry.by_alias(CHAMPION)
        except RegistryUnavailable:
            return None
        return record.version if record else ""

    def healthy_since(self, promoted_at: datetime) -> bool:
        """Did the monitor measure baseline quality on labels after ``promoted_at``?"""
        metric = self.cfg.gate_metric
        values = metric_values(self.ctx.lake, f"performance.{metric}", after=promoted_at)
        return any(v is not None and self._healthy_value(metric, v) for v in values)

    def fresh_evidence(self, cause: str, applied_at: datetime, *, probed: bool = False) -> str | None:
        """What a monitor pass measured on data that arrived after the repair, when it shows the cause gone.

        Causes the monitor's statistics reveal need a window that *started* after the
        repair and was actually evaluated (a quiet pass with too few rows proves nothing);
        causes the healer's own probes reveal (``probed``: e.g. a refused champion, which never
        served, so no window measured it) are settled by the probe in this tick.
        """
        if probed or cause not in _MONITOR_CAUSES:
            return "the probe that raised it answers healthy"
        if not self.ctx.lake.exists(METRICS_TABLE):
            return None

        def after(name: str) -> list[float | None]:
            return metric_values(self.ctx.lake, name, after=applied_at, column="window_start", inclusive=True)

        if cause == Cause.BAD_DEPLOY:
            metric = self.cfg.gate_metric
            healthy = [v for v in after(f"performance.{metric}") if v is not None and self._healthy_value(metric, v)]
            return f"live {metric}={healthy[-1]:.3f} on labels after the repair" if healthy else None
        return "quiet in a monitor pass after the repair"

    def recovery(
        self,
        incident: Incident,
        applied_at: datetime,
        repaired: str | None = None,
        point: dict[str, Any] | None = None,
    ) -> tuple[str | None, change.Recovery]:
        """A drift incident's evidence that it is over, and its quality before, after the drift and after the repair.

        Over when no alarm of its kind was raised on data after the repair, fresh data was
        judged (a drift window of post-repair traffic, or labels after the repair), and the
        champion's quality on post-repair labels is within ``healing.recovery_tolerance`` of
        the pre-drift level. A stream that never had labels (no live quality measured, no
        labeled batch after the repair) is judged by the drift test alone, and says so.
        """
        recorded = incident.evidence.get("quality") or {}
        if repaired is None:
            champion = self.ctx.registry.by_alias(CHAMPION)
            repaired = champion.version if champion else None
        record = change.Recovery(
            self.cfg.gate_metric,
            self.cfg.healing.recovery_tolerance,
            _measure(recorded.get("pre_drift")),
            _measure(recorded.get("post_drift")),
            change.post_repair(self.ctx, repaired, applied_at) if repaired else None,
        )
        if self._alarmed_since(incident.cause, applied_at):
            return None, record
        if record.post_repair is None:
            unlabeled = incident.cause == Cause.DATA_DRIFT and not change.labels_seen(self.ctx)
            if unlabeled and self._drift_tested(applied_at):
                return "a drift test on post-repair traffic raised no alarm (no labels: quality not judged)", record
            return None, record
        if not record.restored:
            return None, record
        if record.post_drift is None and point:  # the repair found the change's first batch: the old model there
            before = incident.evidence.get(change.PRE_DRIFT_VERSION)
            found = change.post_drift(self.ctx, change.ChangePoint.from_evidence(point), before)
            record = replace(record, post_drift=found)
        return f"{record.summary()}: within {record.tolerance:g} of the pre-drift level", record

    def _alarmed_since(self, cause: str, applied_at: datetime) -> bool:
        """Did a monitor pass raise this cause's own alarm on data after the repair?"""
        return change.signal_raised(self.ctx, cause, applied_at)  # the drift causes are named as their signals

    def _drift_tested(self, applied_at: datetime) -> bool:
        shares = metric_values(self.ctx.lake, "drift.share", after=applied_at, column="window_start", inclusive=True)
        return bool(shares)

    def _healthy_value(self, metric: str, value: float) -> bool:

        champion = self.ctx.registry.by_alias(CHAMPION)
        baseline = float(champion.tags.get(f"metric.{metric}", "nan")) if champion else float("nan")
        if baseline != baseline:
            return False
        margin = MonitorThresholds.from_mapping(self.cfg.thresholds).performance.max_drop
        return value <= baseline + margin if lower_is_better(metric) else value >= baseline - margin

    def _open(self, diagnosis: Diagnosis) -> Incident:
        first = min(s.detected_at for s in diagnosis.signals)
        evidence = {k: v for s in diagnosis.signals for k, v in s.evidence.items()}
        incident = self.log.open(diagnosis.cause.value, evidence, detected_at=first)
        _emit(incident, State.DETECTED)
        found = {**diagnosis.to_evidence(), **self._drift_record(diagnosis)}
        diagnosed = self.log.advance(incident, State.DIAGNOSED, evidence=found, detail=diagnosis.rule)
        logger.warning("incident %s opened: %s (%s)", incident.id, diagnosis.cause.value, diagnosis.rule)
        if diagnosed is not None:
            _emit(diagnosed, State.DIAGNOSED)
        return diagnosed or incident

    def _drift_record(self, diagnosis: Diagnosis) -> dict[str, Any]:
        """A drift incident's change point (batch and time) and the pre-drift model's quality before and after it."""
        if diagnosis.cause not in _DRIFT_CAUSES:
            return {}
        # The model whose errors rose (a concept signal names it), else the champion serving now.
        named = [s.evidence.get("model_version") for s in diagnosis.signals if s.evidence.get("model_version")]
        version = str(named[0]) if named else self._champion_version() or None
        try:
            point = change.locate(self.ctx, change.from_signals(diagnosis.signals), version)
            record = change.Recovery(
                self.cfg.gate_metric,
                self.cfg.healing.recovery_tolerance,
                change.pre_drift(self.ctx, point, version),
                change.post_drift(self.ctx, point, version),
                None,
            )
        except (RegistryUnavailable, CheckpointCorrupted, OSError) as exc:  # the incident opens all the same
            logger.warning("could not measure the drift's change point: %s", exc)
            return {}
        return {
            change.CHANGE_POINT: point.to_evidence(),
            change.PRE_DRIFT_VERSION: version,
            "quality": record.to_evidence(),
        }

    def cause_quiet(self, incident: Incident, observation: Observation) -> bool:
        for diagnosis in diagnose(observation.signals, Context(now=observation.started_at)):
            if diagnosis.cause.value == incident.cause:
                return False
        return True

    def tick(self, observation: Observation) -> list[Incident]:
        """Record what was observed and, when healing is on, move every open incident."""
        self.record(observation)
        if not self.cfg.healing.enabled:
            return self.log.open_incidents()
        for incident in self.log.open_incidents():
            if claim(self.ctx.lake, incident.id, datetime.now(UTC)):
                try:
                    self.advance(incident, observation)
                except RegistryUnavailable as exc:  # the incident stays where it is; the next tick looks again
                    logger.warning("incident %s waits for the registry: %s", incident.id, exc)
        return self.log.open_incidents()

    def advance(self, incident: Incident, observation: Observation) -> Incident:
        """Step ``incident`` as far as the evidence allows in this tick."""
        for _ in range(8):  # bounded: a tick never loops on one incident
            state = incident.state
            if state in (State.DETECTED, State.DIAGNOSED):
                step = self._start_next_remedy(incident)
            elif state == State.AWAITING_APPROVAL:
                step = self._await_approval(incident)
            elif state == State.HEALING:
                step = self._apply(incident)
            elif state == State.VERIFYING:
                step = self._verify(incident, observation)
            else:
                return incident
            if step is None:
                return self.log.get(incident.id) or incident
            incident = step
        return incident

    def candidates(self, incident: Incident) -> list[str]:
        """The remedies the rules still allow for ``incident``: its cause's list, minus the exhausted and vetoed."""
        failed = incident.failed_remedies
        vetoed = self.decisions.vetoed(incident.id)
        allowed = self.cfg.healing.policy.get(incident.cause, [])
        return [n for n in allowed if failed.count(n) < self.cfg.healing.max_attempts and n not in vetoed]

    def choose(self, incident: Incident, candidates: list[str], budget_used: float) -> policy.Choice:
        """The policy's pick among ``candidates``, with the context it saw (logged either way)."""
        now = datetime.now(UTC)
        context = policy.features(
            self.cfg,
            incident.evidence,
            incident.failed_remedies,
            budget_used=budget_used,
            labels=policy.labels_bucket(self.ctx.lake, self.cfg.gate_metric, now),
            model=policy.model_bucket(self.ctx.registry.promoted_at, now),
        )
        table = self.learned_table() if self.cfg.healing.policy_mode == "learned" else None
        return policy.choose(self.cfg, incident.cause, candidates, context, table, self.decisions.pins(), self.rng)

    def learned_table(self) -> policy.PolicyTable | None:
        """The trained policy (read again when ``selfheal policy train`` wrote a new one)."""
        lake = self.ctx.lake
        version = lake.version(policy.POLICY_TABLE) if lake.exists(policy.POLICY_TABLE) else None
        if self._policy is None or self._policy[0] != version:
            table = policy.PolicyTable.load(lake) if version is not None else None
            if table is None:
                logger.warning("healing.policy_mode is learned but no policy was trained: the rules choose")
            elif not table.better:
                logger.error(
                    "healing.policy_mode is learned but the trained policy was NOT estimated better than the "
                    "rules (selfheal policy evaluate): the rules choose"
                )
            self._policy = (version, table)
        return self._policy[1]

    def _start_next_remedy(self, incident: Incident) -> Incident | None:
        candidates = self.candidates(incident)
        if not candidates:
            return self._escalate(incident)
        if incident.last.detail.startswith("failed") and self.cfg.healing.cooldown_seconds:
            if (datetime.now(UTC) - incident.last.ts).total_seconds() < self.cfg.healing.cooldown_seconds:
                return None
        used = spent(self.cfg, self.log.incidents(), datetime.now(UTC))
        choice = self.choose(incident, candidates, used)
        name, note = self._within_budget(incident, choice.remedy, used)
        if name is None:
            if incident.last.detail != note:
                self.log.advance(incident, State.DIAGNOSED, detail=note)
                logger.warning("incident %s: %s", incident.id, note)
            return None
        if name != choice.remedy:
            choice = replace(choice, remedy=name, chooser="rules", propensity=1.0, explored=False, reason=note)
        if self.cfg.healing.approval.get(name) == "approve":
            return self._propose(incident, choice)
        plan = get_remedy(name).plan(self.ctx, incident)  # once: the hold decision and the start share it
        held = get_remedy(name).approval_needed(self.ctx, incident, plan)
        return self._propose(incident, choice, held) if held else self._start(incident, choice, note, plan)

    def _start(
        self, incident: Incident, choice: policy.Choice, note: str, plan: dict[str, Any] | None = None
    ) -> Incident | None:
        remedy = get_remedy(choice.remedy)
        attempt = incident.attempts(choice.remedy) + 1
        plan = remedy.plan(self.ctx, incident) if plan is None else plan
        evidence = {"plan": plan, "key": f"{incident.id}:{choice.remedy}:{attempt}", "decision": choice.to_evidence()}
        step = self.log.advance(
            incident, State.HEALING, remedy=choice.remedy, attempt=attempt, evidence=evidence, detail=note
        )
        if step is not None:
            _emit(step, State.HEALING)
        return step

    def _propose(self, incident: Incident, choice: policy.Choice, why: str = "") -> Incident | None:
        """``healing.approval`` (or the remedy, ``why``) says a person decides: wait in AWAITING_APPROVAL
        (the MTTR clock runs on)."""
        detail = (
            f"awaiting approval of {choice.remedy}: selfheal incidents approve {incident.id} "
            f"[--remedy R] or selfheal incidents veto {incident.id} --remedy {choice.remedy}"
            + (f" ({why})" if why else "")
        )
        evidence = {"proposed": choice.remedy, "decision": choice.to_evidence(), **({"why": why} if why else {})}
        step = self.log.advance(
            incident, State.AWAITING_APPROVAL, remedy=choice.remedy, evidence=evidence, detail=detail
        )
        if step is not None:
            _emit(step, State.AWAITING_APPROVAL)
            logger.warning("incident %s: %s", incident.id, detail)
        return None

    def _await_approval(self, incident: Incident) -> Incident | None:
        """Start the approved remedy; choose again when the proposed one was vetoed; else keep waiting."""
        proposal = incident.proposal
        if proposal is None:
            return self._start_next_remedy(incident)
        proposed = str(proposal.evidence["proposed"])
        vetoed = self.decisions.vetoed(incident.id)
        approved = incident.approved
        if approved is not None and approved not in vetoed:
            decision = dict(proposal.evidence.get("decision") or {})
            if approved != proposed:
                decision.update(
                    chooser="person", propensity=1.0, explored=False, reason=f"approved instead of {proposed}"
                )
            decision["remedy"] = approved
            return self._start(incident, policy.Choice(**decision), f"{approved} approved")
        if proposed in vetoed:
            return self.log.advance(incident, State.DIAGNOSED, detail=f"{proposed} vetoed: choosing again")
        return None

    def _within_budget(self, incident: Incident, name: str, used: float) -> tuple[str | None, str]:
        """The remedy to run now: ``name``, a cheaper later one (downgrade), or None (deferred); ``used``: spent."""
        costs, limit = self.cfg.healing.costs, self.cfg.healing.budget_per_window
        if used + costs.get(name, 0.0) <= limit:
            return name, ""
        note = (
            f"deferred {name}: cost {costs.get(name, 0.0):g} exceeds the {max(0.0, limit - used):g} left of "
            f"{limit:g} per {self.cfg.healing.budget_window_seconds:g} s"
        )
        policy = self.cfg.healing.policy.get(incident.cause, [])
        for cheaper in policy[policy.index(name) + 1 :]:
            if used + costs.get(cheaper, 0.0) <= limit and cheaper not in incident.failed_remedies:
                return cheaper, f"{note}; downgraded to {cheaper}"
        return None, note

    def _apply(self, incident: Incident) -> Incident | None:
        healing = incident.last
        remedy = get_remedy(healing.remedy or "")
        plan, key = healing.evidence.get("plan", {}), healing.evidence.get("key", "")
        try:
            outcome = remedy.apply(self.ctx, incident, plan, key)
        except LakeUnreachable as exc:
            outcome = self._lake_failed_remedy(incident, remedy.name, exc)
        except Exception as exc:  # noqa: BLE001 - a remedy that blows up has failed, the healer goes on
            logger.exception("remedy %s failed to apply", remedy.name)
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}")
        if outcome.pending and not outcome.ok:
            self._wait(incident, healing, outcome)
            return None
        if not outcome.ok:
            detail = f"failed to apply: {outcome.detail}"
            return self._step(incident, State.DIAGNOSED, healing, outcome.evidence, detail)
        evidence = {**outcome.evidence, "applied_at": datetime.now(UTC).isoformat()}
        return self._step(incident, State.VERIFYING, healing, evidence, outcome.detail)

    def _lake_failed_remedy(self, incident: Incident, remedy: str, exc: LakeUnreachable) -> Outcome:
        """The lake's store failed under a remedy: not the remedy's failure, for a while.

        The incident waits in HEALING and the next tick applies the remedy again with the same
        key. (When the whole store is down, recording the wait fails too: the tick fails and
        ``HealerLoop`` waits the outage out.) An error that outlasts ``verify_timeout_seconds`` of
        the time the healer could look (a lasting refusal on one path) is the attempt failing,
        so the incident moves on to its next remedy or escalates instead of waiting for ever.
        """
        last = incident.last
        healing = next(
            t
            for t in incident.transitions
            if t.state == State.HEALING and t.remedy == last.remedy and t.attempt == last.attempt
        )
        waited = self._looked_seconds(healing.ts)
        if waited >= self.cfg.healing.verify_timeout_seconds:
            return Outcome(False, f"the lake failed it for {waited:.0f} s: {exc}")
        logger.warning(
            "remedy %s for %s: the lake did not answer (%s); applying it again next tick", remedy, incident.id, exc
        )
        return Outcome(False, "waiting for the lake's store: the remedy is applied again once it answers", pending=True)

    def _wait(self, incident: Incident, healing: Transition, outcome: Outcome) -> None:
        """The remedy cannot act yet (e.g. too few labeled rows after the change): stay HEALING, say why once."""
        if incident.last.detail != outcome.detail:
            evidence = {**healing.evidence, **outcome.evidence, WAITING: True}
            self.log.advance(
                incident,
                State.HEALING,
                remedy=healing.remedy,
                attempt=healing.attempt,
                evidence=evidence,
                detail=outcome.detail,
            )
            logger.warning("incident %s waits: %s", incident.id, outcome.detail)

    def _step(
        self, incident: Incident, state: State, last: Transition, evidence: dict[str, Any], detail: str
    ) -> Incident | None:
        """The next step of the remedy attempt ``last`` records (back to DIAGNOSED: it failed, no event)."""
        step = self.log.advance(
            incident, state, remedy=last.remedy, attempt=last.attempt, evidence=evidence, detail=detail
        )
        if step is not None and state != State.DIAGNOSED:
            _emit(step, state)
        return step

    def _verify(self, incident: Incident, observation: Observation) -> Incident | None:
        verifying = incident.last
        remedy = get_remedy(verifying.remedy or "")
        healing = next(t for t in reversed(incident.transitions) if t.state == State.HEALING)
        applied_at = datetime.fromisoformat(verifying.evidence.get("applied_at", verifying.ts.isoformat()))
        try:
            outcome = remedy.verify(self.ctx, incident, healing.evidence.get("plan", {}), applied_at)
        except Exception as exc:  # noqa: BLE001 - a check that blows up proves nothing yet: look again next tick
            logger.exception("verifying %s for %s failed", remedy.name, incident.id)
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}", pending=True)
        proof = _CAUSE_PROOFS.get(Cause(incident.cause))
        if outcome.ok and proof is not None:
            proved = proof(self.ctx, applied_at)
            outcome = replace(
                proved, detail=f"{outcome.detail}; {proved.detail}", evidence={**outcome.evidence, **proved.evidence}
            )
        quality: dict[str, Any] = {}
        if outcome.ok:
            quiet = observation.started_at > applied_at and self.cause_quiet(incident, observation)
            probed = "refused" in incident.evidence
            fresh = None
            if quiet and Cause(incident.cause) in _DRIFT_CAUSES:
                # The model the repair put in place (a retrain's new version), judged on labels it never saw.
                repaired = verifying.evidence.get("champion")
                point = verifying.evidence.get(change.CHANGE_POINT)
                fresh, record = self.recovery(incident, applied_at, str(repaired) if repaired else None, point)
                quality = {"quality": record.to_evidence()}
            elif quiet:
                fresh = self.fresh_evidence(incident.cause, applied_at, probed=probed)
            if quiet and fresh is not None:
                detail = f"verified: {outcome.detail}; {fresh}"
                resolved = self._step(incident, State.RESOLVED, verifying, {**outcome.evidence, **quality}, detail)
                if resolved is not None:
                    if (after := _ON_RESOLVED.get(Cause(incident.cause))) is not None:
                        after(self.ctx, resolved)
                    self._log_decisions(resolved)
                    logger.warning(
                        "incident %s RESOLVED by %s in %.1f s", incident.id, remedy.name, resolved.mttr_seconds or 0
                    )
                return resolved
        waited = self._looked_seconds(applied_at)
        if waited < self.cfg.healing.verify_timeout_seconds and (outcome.ok or outcome.pending):
            return None  # wait for fresh evidence
        detail = f"failed verification after {waited:.0f} s: {outcome.detail}"
        if quality:
            detail += f"; quality not restored ({quality['quality']['metric']}: {_quality_line(quality['quality'])})"
        return self._step(incident, State.DIAGNOSED, verifying, {**outcome.evidence, **quality}, detail)

    def _log_decisions(self, incident: Incident) -> None:
        """The closed incident's remedy choices, with their outcome, into the decisions log (once each)."""
        try:
            policy.backfill(self.cfg, [incident], self.decisions)
        except (CheckpointError, OSError) as exc:  # `selfheal policy train` logs what is missing
            logger.warning("could not log the decisions of %s: %s", incident.id, exc)

    def _escalate(self, incident: Incident) -> Incident | None:
        tried = ", ".join(incident.remedies_tried) or "none"
        held = get_remedy("hold_fallback").apply(self.ctx, incident, {}, f"{incident.id}:escalation")
        detail = f"escalated: remedies exhausted ({tried}); {held.detail}"
        champion = self._champion_version()
        evidence = {"champion": champion} if champion is not None else {}
        step = self.log.advance(incident, State.ESCALATED, detail=detail, evidence=evidence)
        if step is not None:
            self._log_decisions(step)
            _emit(step, State.ESCALATED)
            _notify(self.cfg, step)
            logger.error("incident %s ESCALATED: %s", incident.id, detail)
        return step


def _measure(data: Any) -> change.Measure | None:
    if not isinstance(data, dict) or data.get("value") is None:
        return None
    return change.Measure(float(data["value"]), str(data.get("source", "")))


def _quality_line(quality: dict[str, Any]) -> str:
    def show(key: str) -> str:
        m = quality.get(key)
        return f"{m['value']:.3f}" if isinstance(m, dict) and m.get("value") is not None else "-"

    return f"pre-drift {show('pre_drift')}, post-drift {show('post_drift')}, post-repair {show('post_repair')}"


# -- events and notifications ----------------------------------------------------------------
def _emit(incident: Incident, state: State) -> None:
    """A Prefect event per transition (best effort: the log is the source of truth)."""
    emit(
        f"selfheal.incident.{state.value.lower()}",
        f"selfheal.incident.{incident.id}",
        {"remedy": incident.last.remedy, "detail": incident.last.detail, "mttr": incident.last.mttr_seconds},
        labels={"selfheal.cause": incident.cause},
    )


def _notify(cfg: SelfhealConfig, incident: Incident) -> None:
    if not cfg.healing.webhook_url:
        return
    try:
        httpx.post(cfg.healing.webhook_url, json=to_report(incident), timeout=10)
    except httpx.HTTPError as exc:
        logger.warning("escalation webhook %s failed: %s", cfg.healing.webhook_url, exc)


# -- the tick --------------------------------------------------------------------------------
#: How long the healer's first registry call may take before the first tick (see ``warm_up``).
_WARM_UP_SECONDS = 30.0


def warm_up(ctx: HealContext, models: bool = True) -> None:
    """Make the first tracking-store call before the first tick.

    Through MLflow (a store with no light reader) it imports MLflow and builds its store:
    8 s on a busy two-core machine, which the first tick's probe (3 s) would report as an
    outage and open a false incident. A store really down now is found by that first
    tick all the same. With ``models`` it also imports what loading a model imports
    (``change.warm_up``): worth it for a healer that keeps ticking, not for one tick.
    """
    try:
        error = tracking_store_error(ctx, timeout=_WARM_UP_SECONDS)
    except Exception:  # noqa: BLE001 - a probe bug surfaces in the first tick, not at start
        logger.exception("warming up the tracking-store client failed")
        return
    if error is not None:
        logger.warning("the tracking store does not answer at start: %s", error)
    if models:
        change.warm_up(ctx.cfg)


def make_context(cfg: SelfhealConfig, config_path: str | None) -> HealContext:
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    # Every read bounded: a locked store must not stall the tick past the outage it should report.
    registry = Registry(cfg.tracking_uri, cfg.model_name, read_seconds=STORE_ANSWER_SECONDS)
    return HealContext(cfg, config_path, lake, registry)


def observe(
    ctx: HealContext, since: datetime, run_monitor: bool = True, delivered: Delivered | None = None
) -> Observation:
    """One monitor pass (plain calls, no flow run: see ``monitor_pass``) plus the healer's probes.

    Given ``delivered`` (a running healer's), the quarantine and the inbox are read from
    ``LATE_COMMIT_SECONDS`` before ``since``, and what was delivered before is left out.
    """

    cfg = ctx.cfg
    observation = Observation(started_at=datetime.now(UTC))
    now = observation.started_at
    upstream = probe_upstream(ctx, now)
    torn = probe_lake(ctx, now)
    observation.signals += upstream + torn
    serving = probe_serving(ctx, now)
    observation.signals += serving
    # A server down or refusing its champion, or a registry away, is those probes' business: no replay then.
    if not serving and not any("tracking_store" in s.evidence for s in upstream):
        observation.signals += golden.probe_golden(ctx, now)
    look_from = delivered.look_from(since) if delivered is not None else since
    observation.signals += probe_quarantine(ctx, look_from, now, delivered)
    if not torn:  # batch rows whose delivery failed, waiting past the grace (``flows.healer.dlq``)
        observation.signals += dlq.probe_dlq(ctx.lake, now, cfg.healing.dlq_grace_seconds)
    posted = inbox.read(ctx.lake, look_from, now)  # posted by passes run elsewhere (landed batches)
    if delivered is not None:
        posted = [p for p in posted if delivered.first_time(f"inbox:{json.dumps(p.to_dict(), sort_keys=True)}", now)]
    observation.signals += posted
    if run_monitor and not upstream and not torn:
        try:
            found = monitor_pass(cfg)
        except (RegistryUnavailable, CheckpointCorrupted, OSError) as exc:
            logger.warning("monitor pass failed: %s", exc)
        else:
            observation.signals += found + _replay_on_output_shift(ctx, observation.signals, found, now)
    return observation


def _replay_on_output_shift(ctx: HealContext, seen: list[Signal], found: list[Signal], now: datetime) -> list[Signal]:
    """The golden replay ahead of its interval when the outputs shifted and the inputs did not.

    Served outputs moving under unchanged inputs is what a swapped model looks like; the
    replay says at once whether it is one, so the shift is diagnosed with it (a mismatch)
    rather than as drift a tick before the scheduled replay would have said so.
    """
    kinds = {s.kind for s in found}
    if SignalKind.PREDICTION_DRIFT not in kinds or SignalKind.DATA_DRIFT in kinds:
        return []
    if any(s.kind in (SignalKind.MODEL_MISMATCH, SignalKind.SERVING_DOWN, SignalKind.MODEL_REFUSED) for s in seen):
        return []
    ctx.probed_at.pop("golden", None)
    return golden.probe_golden(ctx, now)


def _without_new_categories(signals: list[Signal]) -> list[Signal]:
    """``signals`` without data-quality findings that are only new categories (logged, not acted on).

    A value never seen in a column whose values the config does not fix is the input
    distribution moving (the data-drift detectors own it), not a broken expectation: no
    quality remedy applies to an accepted batch, so an incident would only escalate. A
    value outside a declared value set is refused by the pipeline's validation, which
    quarantines the batch and says so in its own signal.
    """
    kept = []
    for signal in signals:
        issues = signal.evidence.get("issues")
        if (
            signal.kind == SignalKind.DATA_QUALITY
            and isinstance(issues, list)
            and issues
            and all(isinstance(i, dict) and i.get("issue") == "new_category" for i in issues)
        ):
            logger.info("new categories observed (drift evidence, no expectation broken): %s", signal.summary())
            continue
        kept.append(signal)
    return kept


def _felt(signals: list[Signal]) -> list[Signal]:
    """``signals`` without the data drift the monitor found does not reach the model (logged, not acted on).

    Drift is felt when its window's labels say so, whatever the estimate: a performance
    drop or concept-drift signal in the same observation keeps every data-drift signal.
    """
    if any(s.kind in (SignalKind.PERFORMANCE_DROP, SignalKind.CONCEPT_DRIFT) for s in signals):
        return signals
    kept = []
    for signal in signals:
        impact = signal.evidence.get("impact")
        if signal.kind == SignalKind.DATA_DRIFT and isinstance(impact, dict) and impact.get("reaches_model") is False:
            logger.info(
                "data drift observed, not repaired (healing.unfelt_drift: observe): the model's outputs and "
                "estimated quality did not move: %s",
                signal.summary(),
            )
            continue
        kept.append(signal)
    return kept


def _closed_since(incidents: list[Incident], cause: str, observed_at: datetime) -> bool:
    """An incident of ``cause`` was closed (by a person or another process) after this observation began.

    Its signals may predate the closing (a refusal seen just before a person rolled back):
    they belong to that incident, and a fresh look decides whether the fault is still there.
    """
    return any(i.cause == cause and i.state.closed and i.last.ts >= observed_at for i in incidents)


@dataclass
class LakeOutage:
    """The lake's object store failing the healer's ticks: since when, how often, and the last error.

    ``since``: when a call first failed (the incident's detection); ``blind_from``: when that
    tick began (from then on the healer could not look, which verification must not count).
    """

    since: datetime
    error: str
    blind_from: datetime
    failed_ticks: int = 1

    def signal(self, now: datetime) -> Signal:
        """The outage as an ``upstream_outage`` signal raised when a call first failed (the MTTR counts from there)."""
        evidence = {
            "lake": self.error,
            "unreachable_seconds": round((now - self.since).total_seconds(), 1),
            "failed_ticks": self.failed_ticks,
        }
        return Signal(
            SignalKind.UPSTREAM_OUTAGE, Severity.CRITICAL, evidence, Window(self.since, now), "healer", self.since
        )


class HealerLoop:
    """Ticks in one process, keeping verification state between ticks.

    The incident log, the leases and the inbox live in the lake. When its object store
    cannot be reached, a tick fails with ``LakeUnreachable``: the loop keeps ticking (the
    process must outlive the outage it is there to report), reads everything again from
    where the last good tick stopped, and the first tick that reaches the lake again
    records the outage as an ``upstream_outage`` incident detected when a tick first failed on it. A repair
    that was being verified when the lake went away gets the outage back: the healer could
    not look, so the outage does not count against its verification time.
    """

    def __init__(
        self, cfg: SelfhealConfig, config_path: str | None, run_monitor: bool = True, warm_models: bool = True
    ) -> None:
        self.ctx = make_context(cfg, config_path)
        warm_up(self.ctx, models=warm_models)  # one tick (``heal --once``) loads a model only if it must
        self.healer = Healer(self.ctx, IncidentLog(self.ctx.lake))
        self.run_monitor = run_monitor
        self.last_observed = datetime.now(UTC)
        self.delivered = Delivered(started_at=self.last_observed)
        self.lake_outage: LakeOutage | None = None
        self.still_open: list[Incident] = []

    def tick(self) -> list[Incident]:
        """One pass: observe, record, repair; the incidents still open (the last good tick's while the lake is down)."""
        started = datetime.now(UTC)
        delivered = Delivered(self.delivered.started_at, dict(self.delivered.keys))
        try:
            observation = observe(self.ctx, self.last_observed, self.run_monitor, delivered)
            if self.lake_outage is not None:
                observation.signals.append(self.lake_outage.signal(observation.started_at))
                self.healer.blind[self.lake_outage.blind_from] = observation.started_at
            still_open = self.healer.tick(observation)
        except LakeUnreachable as exc:
            if self.lake_outage is None:
                # Detected when the call failed: a tick that began before the store went away saw it go then.
                self.lake_outage = LakeOutage(datetime.now(UTC), str(exc), blind_from=started)
                logger.warning("the lake is unreachable; ticking on, recorded once it answers: %s", exc)
            else:
                failed = self.lake_outage.failed_ticks + 1
                self.lake_outage = replace(self.lake_outage, error=str(exc), failed_ticks=failed)
            return self.still_open
        if self.lake_outage is not None:
            logger.warning(
                "the lake answers again after %.0f s: recorded as an upstream_outage incident",
                (observation.started_at - self.lake_outage.since).total_seconds(),
            )
            self.lake_outage = None
        self.last_observed, self.delivered, self.still_open = observation.started_at, delivered, still_open
        return still_open
