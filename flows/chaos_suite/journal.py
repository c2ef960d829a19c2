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

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from chaos.data.probes import rows_lost
from chaos.workload import read_outcomes
from checkpoints.exceptions import CheckpointError

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


_AVAILABILITY_PROBES = frozenset({"availability", "seconds_until_availability"})
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


def _met(journal: Mapping[str, Any]) -> bool:
    """Completed without deviating, steady before the fault, a hypothesis after it, and the fault went in."""
    before = (journal.get("steady_states") or {}).get("before") or {}
    injected = all(
        r.get("status") == "succeeded" for r in journal.get("run") or [] if r["activity"]["type"] == "action"
    )
    return (
        str(journal.get("status")) == "completed"
        and not journal.get("deviated")
        and bool(before.get("steady_state_met", False))
        and bool(_after_probes(journal))
        and injected
    )


def summarize(
    name: str,
    journal: Mapping[str, Any],
    slas: Mapping[str, Any],
    measured: Mapping[str, Any] | None = None,
) -> ExperimentResult:
    """The SLA table row of one journal.

    Args:
        name: the experiment's file name.
        journal: chaoslib's journal.
        slas: ``mttr_seconds``, ``availability``, ``rows_lost`` (the bounds that applied).
        measured: ``availability`` and ``rows_lost`` measured outside the journal, used when
            the experiment has no probe for them.
    """
    measured = measured or {}
    probes = _after_probes(journal)
    availability, rows_lost = _output(probes, "availability"), _output(probes, "rows_lost")
    status, deviated, met = str(journal.get("status")), bool(journal.get("deviated")), _met(journal)
    failures = _failures(journal)
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
    )


def _fault_window(journal: Mapping[str, Any]) -> tuple[float, float] | None:
    """From the first action of the method to the end of the hypothesis after it (epoch seconds)."""
    actions = [r for r in journal.get("run") or [] if r["activity"].get("type") == "action"]
    after = _after_probes(journal)
    if not actions or not after:
        return None
    start = datetime.fromisoformat(actions[0]["start"]).timestamp()
    end = max(datetime.fromisoformat(p["end"]).timestamp() for p in after)
    return start, end


def measure(journal: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Availability of the sandbox's clients during the experiment, and rows lost from its landing zone now."""

    out: dict[str, Any] = {}
    window = _fault_window(journal)
    if window is not None:
        outcomes = read_outcomes(env["SELFHEAL_CHAOS_TRAFFIC_LOG"], start=window[0], end=window[1])
        if outcomes:
            out["availability"] = round(sum(o.ok for o in outcomes) / len(outcomes), 4)
    try:
        out["rows_lost"] = rows_lost(env["SELFHEAL_CHAOS_LANDING"], env["SELFHEAL_CHAOS_LAKE"])
    except (CheckpointError, OSError) as exc:  # a lake mid-repair, a file going: no number rather than a wrong one
        logger.warning("rows lost not measured: %s", exc)
    return out
