"""The remedy policy: which allowed remedy to start for an incident, and a learned one.

``healing.policy`` lists, per cause, the remedies allowed and their order: the
rules. With ``healing.policy_mode: learned`` the healer picks among the remedies
the rules still allow for the incident (the safety envelope: the cause's list,
minus the ones exhausted or vetoed) with a table learned from the decisions log
(``checkpoints.decisions``):

* **Context** (``features``), in buckets so that outcomes pool:
  ``severity`` (critical | warning), ``effect`` (how far the fault is: small |
  large | n/a, from the drift detector's effect size or the quality drop),
  ``labels`` (fresh | none: a labeled quality measurement within the hour),
  ``model`` (new | old | unknown: age of the champion's
  promotion), ``budget`` (ample | tight: share of ``healing.budget_per_window``
  left) and ``tried`` (the remedies that already failed for this incident).
* **Reward** of a choice: ``-(seconds from the choice to verified recovery) -
  cost * learning.cost_seconds``; an escalated incident's choices get
  ``-learning.escalation_penalty_seconds``. Credit goes to every choice of the
  incident (Monte Carlo returns: a remedy that fails is charged the time the
  next one took).
* **Table**: per cause, context bucket and remedy, the mean reward and its
  count (tabular, one-step Q-values). ``selfheal policy train`` rebuilds it
  from every logged outcome; ``selfheal policy show`` prints it.
* **Choice**: a pin (``selfheal policy pin``) wins; else the remedy with the
  best mean reward replaces the rules' first one only when both have
  ``learning.min_observations`` outcomes in this context and the difference is
  more than ``learning.confidence_z`` standard errors; otherwise the rules.
* **Exploration**: epsilon-greedy (``learning.explore_epsilon``), only inside the
  chaos sandbox (``SELFHEAL_CHAOS_SANDBOX`` set); every choice logs its
  propensity, so ``evaluate`` can weigh the logged outcomes (a doubly robust
  estimate with a bootstrap interval).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from checkpoints import Lake
from checkpoints.decisions import Decision, DecisionLog
from checkpoints.exceptions import CheckpointError, RegistryUnavailable
from checkpoints.incidents import WAITING, Incident, State
from checkpoints.metrics import METRICS_TABLE
from flows.config import SelfhealConfig

logger = logging.getLogger(__name__)

POLICY_TABLE = "policy"
#: Set by the chaos sandbox for its processes: the only place the healer explores.
SANDBOX_ENV = "SELFHEAL_CHAOS_SANDBOX"
#: Effect sizes at or above these are ``large``: a drifted feature's (Wasserstein / reference std,
#: or Jensen-Shannon distance) and a quality drop's (the gate metric, absolute).
LARGE_EFFECT = 0.5
LARGE_DROP = 0.1
FRESH_LABELS = timedelta(hours=1)
NEW_MODEL = timedelta(days=1)
FEATURE_NAMES = ("severity", "effect", "labels", "model", "budget", "tried")


# -- context -------------------------------------------------------------------------------
def effect_bucket(evidence: Mapping[str, Any]) -> str:
    """``small`` | ``large`` | ``n/a``: how far the incident's signals say the fault is."""
    sizes: list[float] = []
    drops: list[float] = []
    for signal in evidence.get("signals", []) or []:
        found = signal.get("evidence", {}) if isinstance(signal, Mapping) else {}
        named = found.get("features")
        for feature in named.values() if isinstance(named, Mapping) else ():
            if isinstance(feature, Mapping) and isinstance(feature.get("effect_size"), int | float):
                sizes.append(float(feature["effect_size"]))
        if isinstance(found.get("effect_size"), int | float):
            sizes.append(float(found["effect_size"]))
        if isinstance(found.get("worse_by"), int | float):
            drops.append(abs(float(found["worse_by"])))
    if not sizes and not drops:
        return "n/a"
    large = any(s >= LARGE_EFFECT for s in sizes) or any(d >= LARGE_DROP for d in drops)
    return "large" if large else "small"


def severity_bucket(evidence: Mapping[str, Any]) -> str:
    levels = {s.get("severity") for s in evidence.get("signals", []) or [] if isinstance(s, Mapping)}
    return "critical" if "critical" in levels or not levels else "warning"


def labels_bucket(lake: Lake, metric: str, now: datetime) -> str:
    """``fresh`` | ``none``: a labeled measurement of ``metric`` within ``FRESH_LABELS`` (older files unopened)."""
    try:
        rows = lake.window(METRICS_TABLE, "ts", now - FRESH_LABELS, now + FRESH_LABELS, columns=["name"])
    except (CheckpointError, OSError):
        return "none"
    if rows is None:
        return "none"
    return "fresh" if f"performance.{metric}" in set(rows.column("name").to_pylist()) else "none"


def model_bucket(promoted_at: Callable[[], datetime | None], now: datetime) -> str:
    try:
        when = promoted_at()
    except (RegistryUnavailable, OSError):
        return "unknown"
    if when is None:
        return "unknown"
    return "new" if now - when <= NEW_MODEL else "old"


def features(
    cfg: SelfhealConfig,
    evidence: Mapping[str, Any],
    tried: Sequence[str],
    *,
    budget_used: float,
    labels: str,
    model: str,
) -> dict[str, str]:
    """The context of one choice, bucketed (see the module docstring)."""
    limit = cfg.healing.budget_per_window
    left = 1.0 if limit <= 0 else max(0.0, limit - budget_used) / limit
    return {
        "severity": severity_bucket(evidence),
        "effect": effect_bucket(evidence),
        "labels": labels,
        "model": model,
        "budget": "ample" if left >= 0.5 else "tight",
        "tried": "+".join(sorted(set(tried))) or "-",
    }


def bucket(context: Mapping[str, Any]) -> str:
    """The table key of a context: its features in a fixed order."""
    return ",".join(f"{name}={context.get(name, '?')}" for name in FEATURE_NAMES)


# -- the log -------------------------------------------------------------------------------
def decisions_of(cfg: SelfhealConfig, incident: Incident) -> list[Decision]:
    """A closed incident's remedy choices as decision rows (none while it is open)."""
    closed_at = incident.resolved_at
    if closed_at is None:
        return []
    resolved = incident.state == State.RESOLVED
    rows = []
    for t in incident.transitions:
        if t.state != State.HEALING or t.evidence.get(WAITING) or not t.remedy:
            continue
        said = t.evidence.get("decision") or {}
        rows.append(
            Decision(
                f"{incident.id}:{t.seq}",
                "remedy",
                incident.cause,
                t.ts,
                said.get("chooser", "rules"),
                t.remedy,
                incident_id=incident.id,
                context=dict(said.get("context") or {}),
                candidates=list(said.get("candidates") or [t.remedy]),
                propensity=float(said.get("propensity", 1.0)),
                explored=bool(said.get("explored")),
                outcome="resolved" if resolved else "escalated",
                seconds=(closed_at - t.ts).total_seconds() if resolved else None,
                mttr_seconds=incident.mttr_seconds,
                cost=cfg.healing.costs.get(t.remedy, 0.0),
                by=t.actor,
                note=str(said.get("reason", "")),
            )
        )
    return rows


def backfill(cfg: SelfhealConfig, incidents: Iterable[Incident], log: DecisionLog) -> int:
    """Log the remedy choices of closed incidents, each once (the healer at close; `policy train` for any it
    could not); returns how many were new."""
    added = 0
    for incident in incidents:
        for row in decisions_of(cfg, incident):
            added += log.append(row)
    return added


# -- rewards and the table -----------------------------------------------------------------
def reward(cfg: SelfhealConfig, decision: Decision) -> float:
    learning = cfg.healing.learning
    if decision.outcome != "resolved" or decision.seconds is None:
        return -learning.escalation_penalty_seconds
    return -decision.seconds - decision.cost * learning.cost_seconds


@dataclass(frozen=True)
class Estimate:
    """What the table knows of one remedy in one context."""

    cause: str
    bucket: str
    remedy: str
    n: int
    mean_reward: float
    stderr: float
    mean_seconds: float | None


@dataclass(frozen=True)
class Evaluation:
    """Off-policy estimate of a policy's mean MTTR on the logged first choices of incidents."""

    policy: str
    mean_mttr: float | None
    low: float | None
    high: float | None
    matched: int
    decisions: int

    def line(self) -> str:
        if self.mean_mttr is None:
            return f"{self.policy}: no estimate (none of {self.decisions} logged choices is one it would make)"
        return (
            f"{self.policy}: mean MTTR {self.mean_mttr:.2f} s (95% CI {self.low:.2f}-{self.high:.2f} s), "
            f"{self.matched} of {self.decisions} logged choices are its own"
        )


@dataclass
class PolicyTable:
    """The learned table; ``lookup`` answers per cause, context bucket and remedy."""

    estimates: list[Estimate] = field(default_factory=list)
    trained_at: datetime | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    """``learned`` and ``rules`` (``Evaluation`` as dicts), ``rules_measured`` and ``better``."""

    def lookup(self, cause: str, key: str) -> dict[str, Estimate]:
        return {e.remedy: e for e in self.estimates if e.cause == cause and e.bucket == key}

    @property
    def better(self) -> bool:
        return bool(self.evaluation.get("better"))

    @classmethod
    def train(cls, cfg: SelfhealConfig, decisions: Iterable[Decision]) -> PolicyTable:
        """Mean reward per (cause, bucket, remedy) over every logged outcome of a remedy choice."""
        groups: dict[tuple[str, str, str], list[Decision]] = {}
        for d in decisions:
            if d.kind == "remedy" and d.chosen and d.outcome:
                groups.setdefault((d.cause, bucket(d.context), d.chosen), []).append(d)
        estimates = []
        for (cause, key, remedy), rows in sorted(groups.items()):
            rewards = [reward(cfg, d) for d in rows]
            mean = sum(rewards) / len(rewards)
            spread = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) if len(rewards) > 1 else 0.0
            seconds = [d.seconds for d in rows if d.seconds is not None]
            estimates.append(
                Estimate(
                    cause,
                    key,
                    remedy,
                    len(rows),
                    mean,
                    spread / math.sqrt(len(rewards)),
                    sum(seconds) / len(seconds) if seconds else None,
                )
            )
        return cls(estimates, datetime.now(UTC))

    # -- storage: a lake table, overwritten per training (its versions keep the history)
    def save(self, lake: Lake) -> int:
        rows = [
            {**asdict(e), "trained_at": self.trained_at, "evaluation": _json(self.evaluation)} for e in self.estimates
        ]
        if not rows:  # nothing learned yet: one row that carries the evaluation
            rows = [{"cause": "", "trained_at": self.trained_at, "evaluation": _json(self.evaluation)}]
        return lake.overwrite(POLICY_TABLE, pa.Table.from_pylist(rows, schema=_SCHEMA))

    @classmethod
    def load(cls, lake: Lake) -> PolicyTable | None:
        """The newest trained table, or None when ``selfheal policy train`` never ran."""
        if not lake.exists(POLICY_TABLE):
            return None
        rows = lake.read(POLICY_TABLE).to_pylist()
        if not rows:
            return None
        estimates = [
            Estimate(r["cause"], r["bucket"], r["remedy"], r["n"], r["mean_reward"], r["stderr"], r["mean_seconds"])
            for r in rows
            if r["cause"]
        ]
        return cls(estimates, rows[0]["trained_at"], json.loads(rows[0]["evaluation"] or "{}"))


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


_SCHEMA = pa.schema(
    [
        ("cause", pa.string()),
        ("bucket", pa.string()),
        ("remedy", pa.string()),
        ("n", pa.int64()),
        ("mean_reward", pa.float64()),
        ("stderr", pa.float64()),
        ("mean_seconds", pa.float64()),
        ("trained_at", pa.timestamp("us", tz="UTC")),
        ("evaluation", pa.string()),
    ]
)


# -- choosing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """The remedy to start and how it was chosen (stored in the HEALING row, then the decisions log)."""

    remedy: str
    chooser: str
    propensity: float
    candidates: list[str]
    context: dict[str, str]
    explored: bool = False
    reason: str = ""

    def to_evidence(self) -> dict[str, Any]:
        return asdict(self)


def greedy(
    cfg: SelfhealConfig, cause: str, candidates: Sequence[str], context: Mapping[str, str], table: PolicyTable | None
) -> tuple[str, str, str]:
    """(remedy, chooser, reason) without exploration: the learned pick where it is trusted, else the rules'."""
    if cfg.healing.policy_mode != "learned":
        return candidates[0], "rules", ""
    if table is None:
        return candidates[0], "rules", "no learned policy yet (selfheal policy train)"
    if not table.better:
        return candidates[0], "rules", "the learned policy was not estimated better than the rules"
    return table_pick(cfg, table, cause, candidates, bucket(context))


def table_pick(
    cfg: SelfhealConfig, table: PolicyTable, cause: str, candidates: Sequence[str], key: str
) -> tuple[str, str, str]:
    """What the table alone says for ``cause`` in context bucket ``key`` (its evaluation and the mode aside)."""
    rules_pick = candidates[0]
    learning = cfg.healing.learning
    known = table.lookup(cause, key)
    trusted = {r: e for r, e in known.items() if r in candidates and e.n >= learning.min_observations}
    baseline = trusted.get(rules_pick)
    if baseline is None:
        return rules_pick, "rules", f"fewer than {learning.min_observations} outcomes of {rules_pick} here"
    best = max(trusted.values(), key=lambda e: e.mean_reward)
    margin = learning.confidence_z * math.hypot(best.stderr, baseline.stderr)
    if best.remedy != rules_pick and best.mean_reward - baseline.mean_reward > margin:
        why = f"{best.remedy} {best.mean_reward:.1f} vs {rules_pick} {baseline.mean_reward:.1f}"
        return best.remedy, "learned", why
    return rules_pick, "learned", f"{rules_pick} is (as good as) the best here"


def choose(
    cfg: SelfhealConfig,
    cause: str,
    candidates: Sequence[str],
    context: Mapping[str, str],
    table: PolicyTable | None,
    pins: Mapping[str, str],
    rng: random.Random,
) -> Choice:
    """The remedy to start among ``candidates`` (non-empty, in the rules' order)."""
    ctx = dict(context)
    pinned = pins.get(cause)
    if pinned is not None and pinned in candidates:
        return Choice(pinned, "person", 1.0, list(candidates), ctx, reason=f"pinned for {cause}")
    remedy, chooser, reason = greedy(cfg, cause, candidates, context, table)
    epsilon = cfg.healing.learning.explore_epsilon if os.environ.get(SANDBOX_ENV) else 0.0
    if epsilon <= 0 or len(candidates) < 2:
        return Choice(remedy, chooser, 1.0, list(candidates), ctx, reason=reason)
    share = epsilon / len(candidates)
    explored = rng.random() < epsilon
    picked = rng.choice(list(candidates)) if explored else remedy
    propensity = share + (1.0 - epsilon if picked == remedy else 0.0)
    note = f"explored (epsilon {epsilon:g})" if explored else reason
    return Choice(picked, chooser, propensity, list(candidates), ctx, explored, note)


# -- off-policy evaluation -----------------------------------------------------------------
def first_choices(decisions: Iterable[Decision]) -> list[Decision]:
    """Each incident's first remedy choice with a known outcome (the one its MTTR answers for)."""
    firsts: dict[str, Decision] = {}
    for d in decisions:
        if d.kind == "remedy" and d.outcome and d.incident_id and d.context.get("tried", "-") == "-":
            firsts.setdefault(d.incident_id, d)
    return list(firsts.values())


def estimate_mttr(
    cfg: SelfhealConfig,
    name: str,
    pick: Callable[[Decision], str],
    logged: Sequence[Decision],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Doubly robust estimate of the mean MTTR had ``pick`` chosen, with a 95% bootstrap interval.

    Per logged first choice ``i`` (context ``x``, remedy ``a``, propensity ``p``, MTTR ``y``):
    ``q(x, pick(x)) + [pick(x) == a] / p * (y - q(x, a))``, where ``q`` is the mean logged
    MTTR of a remedy in a context (of the remedy anywhere when the context has none).
    The model term averages over every logged context, so the estimate stands for the
    contexts as they came; the weighted term corrects the model where it is wrong. The
    interval resamples the logged choices and refits ``q`` each time. An escalated
    incident counts as ``learning.escalation_penalty_seconds``; later choices of an
    incident are assumed to follow the logged ones.
    """
    penalty = cfg.healing.learning.escalation_penalty_seconds
    rows = [
        (
            bucket(d.context),
            d.chosen or "",
            pick(d),
            d.propensity,
            d.mttr_seconds if d.mttr_seconds is not None else penalty,
        )
        for d in logged
    ]
    matched = sum(1 for _, a, b, _, _ in rows if a == b)
    if not matched:
        return Evaluation(name, None, None, None, 0, len(rows))

    def doubly_robust(sample: Sequence[tuple[str, str, str, float, float]]) -> float:
        cells: dict[tuple[str, str], list[float]] = {}
        remedies: dict[str, list[float]] = {}
        for key, chosen, _, _, y in sample:
            cells.setdefault((key, chosen), []).append(y)
            remedies.setdefault(chosen, []).append(y)
        overall = [y for *_, y in sample]

        def q(key: str, remedy: str) -> float:
            found = cells.get((key, remedy)) or remedies.get(remedy) or overall
            return sum(found) / len(found)

        terms = [
            q(key, target) + ((y - q(key, chosen)) / p if target == chosen else 0.0)
            for key, chosen, target, p, y in sample
        ]
        return sum(terms) / len(terms)

    rng = random.Random(seed)
    boots = sorted(doubly_robust(rng.choices(rows, k=len(rows))) for _ in range(resamples))
    low, high = boots[int(0.025 * (resamples - 1))], boots[int(0.975 * (resamples - 1))]
    return Evaluation(name, doubly_robust(rows), low, high, matched, len(rows))


def evaluate(cfg: SelfhealConfig, table: PolicyTable, decisions: Sequence[Decision]) -> dict[str, Any]:
    """The learned policy against the rules on the logged first choices (see ``estimate_mttr``).

    ``better``: the learned estimate is below both the rules' estimate and, where the
    rules chose alone, their measured mean MTTR.
    """
    logged = first_choices(decisions)

    def learned(d: Decision) -> str:
        return table_pick(cfg, table, d.cause, d.candidates or [d.chosen or ""], bucket(d.context))[0]

    def rules(d: Decision) -> str:
        return (d.candidates or [d.chosen or ""])[0]

    mine = estimate_mttr(cfg, "learned", learned, logged)
    theirs = estimate_mttr(cfg, "rules", rules, logged)
    by_rules = [d.mttr_seconds for d in logged if d.chooser == "rules" and not d.explored]
    penalty = cfg.healing.learning.escalation_penalty_seconds
    measured = [m if m is not None else penalty for m in by_rules]
    rules_measured = sum(measured) / len(measured) if measured else None
    better = mine.mean_mttr is not None and all(
        ref is None or mine.mean_mttr < ref for ref in (theirs.mean_mttr, rules_measured)
    )
    return {
        "learned": asdict(mine),
        "rules": asdict(theirs),
        "rules_measured": rules_measured,
        "rules_measured_n": len(measured),
        "better": better,
    }


def describe(table: PolicyTable, cfg: SelfhealConfig) -> list[str]:
    """``selfheal policy show``: per cause and context, the remedy chosen, its estimated MTTR and evidence."""
    lines = []
    if table.trained_at:
        lines.append(f"trained {table.trained_at:%Y-%m-%d %H:%M:%S} UTC")
    for key in ("learned", "rules"):
        if key in table.evaluation:
            lines.append("  " + Evaluation(**table.evaluation[key]).line())
    if table.evaluation.get("rules_measured") is not None:
        lines.append(
            f"  rules measured: mean MTTR {table.evaluation['rules_measured']:.2f} s over "
            f"{table.evaluation['rules_measured_n']} incidents they chose alone"
        )
    verdict = "better than the rules: used" if table.better else "NOT better than the rules: the healer keeps the rules"
    lines.append(f"  verdict: {verdict} (healing.policy_mode: {cfg.healing.policy_mode})")
    seen = sorted({(e.cause, e.bucket) for e in table.estimates})
    for cause, key in seen:
        known = table.lookup(cause, key)
        tried = key.rpartition("tried=")[2].split("+")  # ``tried`` is the bucket's last feature
        candidates = [r for r in cfg.healing.policy.get(cause, []) if r not in tried] or list(known)
        remedy, chooser, reason = table_pick(cfg, table, cause, candidates, key)
        lines.append(f"{cause} [{key}]: {remedy} ({chooser}: {reason})")
        for e in sorted(known.values(), key=lambda e: -e.mean_reward):
            seconds = f"{e.mean_seconds:.2f} s" if e.mean_seconds is not None else "escalated"
            lines.append(f"    {e.remedy:<20} n={e.n:<4} MTTR from choice {seconds:>10}  reward {e.mean_reward:.2f}")
    if not seen:
        lines.append("no outcomes logged yet")
    return lines
