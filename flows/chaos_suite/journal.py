"""Reading a Chaos Toolkit journal into the SLA table's row for one experiment.

The MTTR is the longest ``seconds_until_*`` output of the hypothesis after the method
(each counts from the fault's injection, so the longest is when every recovery
condition held); availability and rows lost come from their probes or, where an
experiment has none, from ``measure`` (the sandbox's client log and lake).

Example:
    >>> row = summarize("serving-kill-worker", journal, {"mttr_seconds": 60, "availability": 0.99, "rows_lost": 0})
    >>> row.verdict, row.mttr_seconds
    ('met', 3.2)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from chaos import ledger
from chaos._landing import account
from chaos.workload import Outcome, read_outcomes
from checkpoints import Lake
from checkpoints.exceptions import CheckpointError
from checkpoints.incidents import Incident, IncidentLog, State

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeline:
    """What the sandbox's clients saw and what happened, from the fault's injection (``t = 0``) to the verdict.

    ``series`` has one point per second of the fault window: ``(t, availability, p99_ms)``,
    availability the share of that second's requests answered (None: no request came
    back in it) and p99 their 99th-percentile latency in milliseconds. ``events`` are
    ``(t, what)``: the fault injected, each incident opened (detected), each remedy the
    healer applied, the repair verified or the incident resolved/escalated, the fault removed.
    """

    fault_at: float
    """Epoch seconds of the injection."""
    end_at: float
    """Epoch seconds of the verdict (the end of the hypothesis after the method)."""
    series: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentResult:
    """What one experiment showed, as the SLA table reports it.

    ``verdict`` is ``met`` (completed, steady state held after the fault), ``missed``
    (it deviated or a probe failed: ``failures`` says which and why) or ``skipped``
    (it cannot run here: ``failures`` says why).
    """

    name: str
    title: str
    verdict: str
    status: str
    deviated: bool
    mttr_seconds: float | None
    mttr_sla_seconds: float
    availability: float | None
    availability_sla: float | None
    """None: this experiment's hypothesis does not hold availability (the table shows it measured anyway)."""
    rows_lost: int | None
    rows_lost_sla: int | None
    failures: list[str] = field(default_factory=list)
    started_at: str = ""
    ended_at: str = ""
    duration_seconds: float = 0.0
    proves: str = ""
    """``healed`` (the healer must act: with healing off it must miss) or ``absorbed`` (the design rides it out)."""
    p99_ms: float | None = None
    """99th-percentile latency of the clients' requests over the fault window."""
    unexpected_incidents: list[str] = field(default_factory=list)
    """Incidents of a cause other than the fault's own that opened during the experiment, with their reason."""
    timeline: Timeline | None = None
    rows_awaiting: int = 0
    """Rows of quarantined files an escalated incident names: not lost, awaiting a person."""
    unreadable_awaiting: int = 0
    """Such files that cannot be read (their rows are unknown)."""
    tested: bool = False
    """Steady before the fault, the fault injected, the hypothesis after it checked: a miss is about recovery."""
    awaited_approval_seconds: float | None = None
    """Of the MTTR, how long the repair waited for a person's approval (``healing.approval``)."""


@dataclass
class SuiteResult:
    """Every experiment of one suite run."""

    run_id: str
    healing_enabled: bool
    results: list[ExperimentResult] = field(default_factory=list)
    report_markdown: str | None = None
    report_html: str | None = None
    acknowledged: list[str] = field(default_factory=list)
    """Escalated incidents the suite took over between experiments (as on-call would), so one
    experiment's escalation does not hold back the next one's incidents of the same cause."""

    @property
    def missed(self) -> list[str]:
        return [r.name for r in self.results if r.verdict == "missed"]

    @property
    def passed(self) -> bool:
        return not self.missed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missed": self.missed, "passed": self.passed}


def _func(run: Mapping[str, Any]) -> str:
    return str(run["activity"].get("provider", {}).get("func", ""))


def _after_probes(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    after = (journal.get("steady_states") or {}).get("after") or {}
    return list(after.get("probes") or [])


_WRAPPED = "chaoslib.exceptions.ActivityFailed: "


def _failure(run: Mapping[str, Any]) -> str:
    name = run["activity"]["name"]
    if run.get("status") == "failed":
        message = (run.get("exception") or ["failed"])[-1].strip()
        while message.startswith(_WRAPPED):  # chaoslib wraps the activity's own ActivityFailed once more
            message = message.removeprefix(_WRAPPED)
        return f"{name}: {message}"
    return f"{name}: {run.get('output')!r} is outside {run['activity'].get('tolerance')!r}"


def _failures(journal: Mapping[str, Any]) -> list[str]:
    """Every probe outside its tolerance (after, then before the fault) and every failed action or rollback."""
    before = (journal.get("steady_states") or {}).get("before") or {}
    failures = [_failure(p) for p in _after_probes(journal) if not p.get("tolerance_met", True)]
    failures += [
        f"before the fault: {_failure(p)}" for p in before.get("probes") or [] if not p.get("tolerance_met", True)
    ]
    failures += [f"method: {_failure(r)}" for r in journal.get("run") or [] if r.get("status") == "failed"]
    failures += [f"rollback: {_failure(r)}" for r in journal.get("rollbacks") or [] if r.get("status") == "failed"]
    return failures


_AVAILABILITY_PROBES = frozenset({"availability", "availability_during_fault", "seconds_until_availability"})
_ROWS_PROBES = frozenset({"rows_lost", "seconds_until_no_rows_lost", "seconds_until_pipeline_caught_up"})


def _held(journal: Mapping[str, Any]) -> set[str]:
    """Which bounds besides the MTTR the experiment's hypothesis holds: ``availability``, ``rows_lost``."""
    hypothesis = (journal.get("experiment") or {}).get("steady-state-hypothesis") or {}
    funcs = {str(p.get("provider", {}).get("func", "")) for p in hypothesis.get("probes") or []}
    return {
        name for name, probes in (("availability", _AVAILABILITY_PROBES), ("rows_lost", _ROWS_PROBES)) if funcs & probes
    }


def _output(probes: list[dict[str, Any]], func: str) -> Any:
    """The output of the first probe of ``func`` that has one (None when none has)."""
    return next((p["output"] for p in probes if _func(p) == func and p.get("output") is not None), None)


def _mttr(probes: list[dict[str, Any]]) -> float | None:
    """The longest recovery, when every recovery probe succeeded (None when one did not, or there is none)."""
    recovery = [p for p in probes if _func(p).startswith("seconds_")]
    seconds = [
        float(p["output"])
        for p in recovery
        if _func(p).startswith("seconds_until_") and p.get("status") == "succeeded" and p.get("output") is not None
    ]
    recovered = bool(seconds) and all(p.get("status") == "succeeded" for p in recovery)
    return round(max(seconds), 2) if recovered else None


def _tested(journal: Mapping[str, Any]) -> bool:
    """Steady before the fault, the fault went in, and the hypothesis after it was checked.

    A miss without all three says nothing about recovery (with healing off it must not
    pass for "the healer was needed").
    """
    before = (journal.get("steady_states") or {}).get("before") or {}
    actions = [r for r in journal.get("run") or [] if r["activity"]["type"] == "action"]
    injected = bool(actions) and all(r.get("status") == "succeeded" for r in actions)
    return bool(before.get("steady_state_met", False)) and injected and bool(_after_probes(journal))


def _met(journal: Mapping[str, Any]) -> bool:
    """Completed without deviating, steady before the fault, a hypothesis after it, and the fault went in."""
    return str(journal.get("status")) == "completed" and not journal.get("deviated") and _tested(journal)


def summarize(
    name: str,
    journal: Mapping[str, Any],
    slas: Mapping[str, Any],
    measured: Mapping[str, Any] | None = None,
    proves: str = "",
) -> ExperimentResult:
    """The SLA table row of one journal.

    Args:
        name: the experiment's file name.
        journal: chaoslib's journal.
        slas: ``mttr_seconds``, ``availability``, ``rows_lost`` (the bounds that applied).
        measured: what ``measure`` found outside the journal: ``availability`` and
            ``rows_lost`` (used when the experiment has no probe for them), ``p99_ms``,
            ``timeline`` and ``unexpected_incidents`` (each one fails the experiment).
        proves: the experiment's class (``healed`` or ``absorbed``).
    """
    measured = measured or {}
    probes = _after_probes(journal)
    availability = _output(probes, "availability_during_fault")
    availability = availability if availability is not None else _output(probes, "availability")
    rows_lost = _output(probes, "rows_lost")
    status, deviated = str(journal.get("status")), bool(journal.get("deviated"))
    unexpected = list(measured.get("unexpected_incidents") or [])
    met = _met(journal) and not unexpected
    failures = _failures(journal) + [f"an incident the fault does not explain opened: {u}" for u in unexpected]
    if not met and not failures:
        failures.append(f"experiment {status}{' (deviated)' if deviated else ''}")
    held = _held(journal)
    return ExperimentResult(
        name=name,
        title=str((journal.get("experiment") or {}).get("title", name)),
        verdict="met" if met else "missed",
        status=status,
        deviated=deviated,
        mttr_seconds=_mttr(probes),
        mttr_sla_seconds=float(slas["mttr_seconds"]),
        availability=float(availability) if availability is not None else measured.get("availability"),
        availability_sla=float(slas["availability"]) if "availability" in held else None,
        rows_lost=int(rows_lost) if rows_lost is not None else measured.get("rows_lost"),
        rows_lost_sla=int(slas["rows_lost"]) if "rows_lost" in held else None,
        failures=failures,
        started_at=str(journal.get("start", "")),
        ended_at=str(journal.get("end", "")),
        duration_seconds=round(float(journal.get("duration") or 0.0), 1),
        proves=proves,
        p99_ms=measured.get("p99_ms"),
        unexpected_incidents=unexpected,
        timeline=measured.get("timeline"),
        rows_awaiting=int(measured.get("rows_awaiting") or 0),
        unreadable_awaiting=int(measured.get("unreadable_awaiting") or 0),
        tested=_tested(journal),
        awaited_approval_seconds=_awaited_approval(journal),
    )


def _awaited_approval(journal: Mapping[str, Any]) -> float | None:
    """What an action that approved a remedy as a person says it waited (``chaos.incidents.actions``)."""
    for run in journal.get("run") or []:
        output = run.get("output")
        if isinstance(output, Mapping) and output.get("awaited_approval_seconds") is not None:
            return float(output["awaited_approval_seconds"])
    return None


def _fault_window(journal: Mapping[str, Any], env: Mapping[str, str]) -> tuple[float, float] | None:
    """From the fault's injection (the ledger's first ``fault`` of this run, else the method's first
    action) to the end of the hypothesis after the method (epoch seconds)."""
    actions = [r for r in journal.get("run") or [] if r["activity"].get("type") == "action"]
    after = _after_probes(journal)
    if not actions or not after:
        return None
    faults = [e.at for e in _ledger_run(env) if e.event == "fault"]
    start = min(faults) if faults else datetime.fromisoformat(actions[0]["start"]).timestamp()
    end = max(datetime.fromisoformat(p["end"]).timestamp() for p in after)
    return start, end


def _ledger_run(env: Mapping[str, str]) -> list[ledger.Entry]:
    """The fault ledger's entries for the experiment that just ran (none without a ledger)."""
    path = env.get("SELFHEAL_CHAOS_LEDGER")
    return ledger.current_run({ledger.LEDGER_KEY: path}) if path else []


def _traffic_log(journal: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The clients' log the hypothesis holds availability on (a server behind a link has its own)."""
    for p in _after_probes(journal):
        if _func(p) == "availability_during_fault":
            path = str(p["activity"].get("provider", {}).get("arguments", {}).get("traffic_log", ""))
            path = path.replace("${sandbox}", env.get("SELFHEAL_CHAOS_SANDBOX", "")).replace(
                "${traffic_log}", env["SELFHEAL_CHAOS_TRAFFIC_LOG"]
            )
            if path and "${" not in path:
                return path
    return env["SELFHEAL_CHAOS_TRAFFIC_LOG"]


def p99(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ranked = sorted(values)
    return round(ranked[max(0, math.ceil(0.99 * len(ranked)) - 1)], 1)


def traffic_series(outcomes: list[Outcome], start: float, end: float) -> list[tuple[float, float | None, float | None]]:
    """One point per second from ``start`` to ``end``: ``(t, availability, p99_ms)`` of the requests back in it."""
    buckets: dict[int, list[Outcome]] = {}
    for o in outcomes:
        buckets.setdefault(int(o.t - start), []).append(o)
    series = []
    for second in range(int(end - start) + 1):
        got = buckets.get(second, [])
        share = round(sum(o.ok for o in got) / len(got), 4) if got else None
        series.append((float(second), share, p99([o.ms for o in got])))
    return series


def incident_events(incidents: list[Incident], start: float, end: float) -> list[tuple[float, str]]:
    """``(t, what)`` for each incident transition in the window: detected, each remedy, resolved or escalated."""
    events = []
    for incident in incidents:
        for t in incident.transitions:
            at = t.ts.timestamp()
            if not start <= at <= end:
                continue
            if t.state == State.DETECTED:
                events.append((at - start, f"{incident.cause} detected"))
            elif t.state == State.HEALING and t.remedy:
                events.append((at - start, f"remedy {t.remedy}"))
            elif t.state in (State.RESOLVED, State.ESCALATED):
                events.append((at - start, f"{incident.cause} {t.state.value.lower()}"))
    return events


def unexpected_incidents(incidents: list[Incident], start: float, end: float, expected: Sequence[str]) -> list[str]:
    """Incidents detected in ``[start, end]`` whose cause is not one the fault may open, with their evidence."""
    out = []
    for incident in incidents:
        opened = incident.detected_at.timestamp()
        if start <= opened <= end and incident.cause not in expected:
            first = incident.transitions[0]
            why = first.detail or json.dumps(first.evidence, default=str)[:200]
            out.append(f"{incident.id} ({incident.cause}, {incident.state.value}): {why}")
    return out


def measure(
    journal: Mapping[str, Any], env: Mapping[str, str], expected_incidents: Sequence[str] = ()
) -> dict[str, Any]:
    """What the clients saw and what opened over the fault window, and rows lost from the landing zone.

    Availability and p99 count every request back from the injection to the verdict,
    outage included; the timeline has them per second with the fault, the restores and
    the incidents' transitions. Rows lost and rows awaiting a person are the ledger's
    ``accounted`` entry (the control counts them before the rollbacks remove injected
    files), else the landing zone now.
    """
    out: dict[str, Any] = {}
    window = _fault_window(journal, env)
    if window is not None:
        start, end = window
        outcomes = read_outcomes(_traffic_log(journal, env), start=start, end=end)
        if outcomes:
            out["availability"] = round(sum(o.ok for o in outcomes) / len(outcomes), 4)
            out["p99_ms"] = p99([o.ms for o in outcomes])
        events = [(e.at - start, f"{e.event} {e.fault}") for e in _ledger_run(env) if e.event in ("fault", "restore")]
        try:
            incidents = IncidentLog(Lake(env["SELFHEAL_CHAOS_LAKE"])).incidents()
        except (CheckpointError, OSError) as exc:
            logger.warning("incidents not read: %s", exc)
            incidents = []
        out["unexpected_incidents"] = unexpected_incidents(incidents, start, end, expected_incidents)
        events += incident_events(incidents, start, end)
        out["timeline"] = Timeline(start, end, traffic_series(outcomes, start, end), sorted(events))
    accounted = [e.detail for e in _ledger_run(env) if e.event == "accounted"]
    if accounted:  # counted by the control at the verdict, before the rollbacks removed injected files
        out.update(accounted[-1])
        return out
    try:  # one pass over the landing zone (each file is hashed)
        out.update(account(env["SELFHEAL_CHAOS_LANDING"], env["SELFHEAL_CHAOS_LAKE"]).counts())
    except (CheckpointError, OSError) as exc:  # a lake mid-repair, a file going: no number rather than a wrong one
        logger.warning("rows lost not measured: %s", exc)
    return out
