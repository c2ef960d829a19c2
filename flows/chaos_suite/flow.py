"""The chaos suite: inject every fault into a sandboxed selfheal, measure recovery, hold it to the SLA.

One flow run:

1. builds a sandbox (``chaos.sandbox``: its own config, lake, landing zone, MLflow store,
   Prefect server, model server, clients, pipeline schedule and healer) from the
   project's ``selfheal.yaml`` (its ``data``, ``trainer``, ``gate``, ``healing`` and ``slas``);
2. runs each experiment of ``chaos/experiments`` through chaoslib's API, one after the
   other, with the sandbox's locations in ``SELFHEAL_CHAOS_*`` (with healing on, it first
   waits a little for the healer to close what the previous experiment opened);
3. reads each journal: the MTTR is the longest ``seconds_until_*`` output of the
   hypothesis after the method (each counts from the fault's injection, so the longest
   is when every recovery condition held), availability and rows lost come from their
   probes or, where an experiment has none, from the sandbox's client log and lake;
4. appends one row per experiment (verdict and whole journal) to the ``chaos_runs``
   Delta table of the project's lake, publishes a markdown artifact, writes a report
   (markdown and HTML) under ``<home>/reports``, stops the sandbox;
5. fails (``SLAMissed``) when any experiment missed its SLA, naming them.

Example:
    >>> result = run_suite(load_config(), names=["serving-kill-worker"])
    >>> print(render_table(result))

From the command line: ``selfheal chaos run [NAME ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError
from flows.config import SelfhealConfig, load_config

logger = logging.getLogger(__name__)

CHAOS_RUNS = "chaos_runs"
#: Longest wait between experiments for the healer to close what the last one opened.
SETTLE_SECONDS = 45.0
EXPERIMENTS = Path(__file__).resolve().parent.parent / "chaos" / "experiments"
#: Run order: faults that leave no trace first; those that change the data or the model last.
ORDER = (
    "serving-kill-worker",
    "serving-kill-server",
    "registry-tracking-store-unreachable",
    "data-corrupt-truncate",
    "data-corrupt-garbage",
    "data-corrupt-schema",
    "data-corrupt-nulls",
    "pipeline-kill-mid-stage",
    "network-throttle-serving",
    "network-cut-serving",
    "network-cut-tracking",
    "registry-bad-model",
    "release-canary-worse",
    # Concept before covariate: a model retrained on shifted inputs makes the clean stream
    # put back by the covariate rollback a real shift, which would be the next experiment's.
    "data-drift-concept",
    "data-drift-covariate",
)
SCHEMA = pa.schema(
    [
        ("suite_run", pa.string()),
        ("experiment", pa.string()),
        ("title", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),
        ("deviated", pa.bool_()),
        ("verdict", pa.string()),
        ("mttr_seconds", pa.float64()),
        ("mttr_sla_seconds", pa.float64()),
        ("availability", pa.float64()),
        ("availability_sla", pa.float64()),
        ("rows_lost", pa.int64()),
        ("rows_lost_sla", pa.int64()),
        ("healing_enabled", pa.bool_()),
        ("failures", pa.string()),
        ("journal", pa.string()),
    ]
)


class SLAMissed(SelfhealError):
    """One or more experiments missed their SLA.

    Attributes:
        result: the whole suite result (every experiment, met or not).
    """

    def __init__(self, result: SuiteResult) -> None:
        self.result = result
        super().__init__(f"chaos suite: SLA missed by {', '.join(result.missed)}")


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


# -- experiments ------------------------------------------------------------------------
def experiment_paths(names: Sequence[str] = (), folder: Path = EXPERIMENTS) -> list[Path]:
    """The local experiments to run, in ``ORDER`` (unknown ones after, by name); all when ``names`` is empty.

    Raises:
        ValueError: a name that is not an experiment in ``folder``.
    """
    found = {p.stem: p for p in folder.glob("*.yaml")}
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise ValueError(f"no such experiment: {', '.join(unknown)} (have: {', '.join(sorted(found))})")
    chosen = list(names) or list(found)
    rank = {name: i for i, name in enumerate(ORDER)}
    return [found[n] for n in sorted(dict.fromkeys(chosen), key=lambda n: (rank.get(n, len(ORDER)), n))]


def skip_reason(experiment: Mapping[str, Any]) -> str | None:
    """Why an experiment cannot run on this machine (None when it can)."""
    if "needs-root" in (experiment.get("tags") or []) and os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and tc); this process is not root"
    return None


def _config_overrides() -> list[str]:
    """The caller's ``SELFHEAL_<KEY>`` config overrides (bar ``slas`` and ``gate``, which ``chaos.sla`` reads).

    Processes an experiment starts (a server in a network namespace) inherit this
    environment; ``SELFHEAL_HOME=...`` there would point them at the caller's home, not
    the sandbox's (its config file says where everything is).
    """
    keys = [f"SELFHEAL_{name.upper()}" for name in SelfhealConfig.model_fields if name not in ("slas", "gate")]
    return [k for k in os.environ if any(k == key or k.startswith(f"{key}__") for key in keys)]


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    hidden = [k for k in _config_overrides() if k not in values]
    before = {k: os.environ.get(k) for k in [*values, *hidden]}
    for key in hidden:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signals_allowed() -> Iterator[None]:
    """chaoslib installs SIGTERM/SIGUSR handlers, which Python allows in the main thread only."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    import chaoslib.run

    original = chaoslib.run.exit_signals
    chaoslib.run.exit_signals = contextlib.nullcontext
    try:
        yield
    finally:
        chaoslib.run.exit_signals = original


def run_one(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Run one experiment with chaoslib (as ``chaos run`` does) and return its journal."""
    from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
    from chaoslib.loader import load_experiment

    with _environment(env):
        experiment = load_experiment(str(path))
        ensure_experiment_is_valid(experiment)
        strategy = (experiment.get("runtime") or {}).get("rollbacks", {}).get("strategy", "default")
        settings = {"runtime": {"rollbacks": {"strategy": strategy}, "hypothesis": {"strategy": "default"}}}
        with _signals_allowed():
            journal: dict[str, Any] = run_experiment(experiment, settings=settings)
    return journal


# -- reading a journal ----------------------------------------------------------------------
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


def _sla_config(experiment: Mapping[str, Any], key: str) -> Any:
    spec = (experiment.get("configuration") or {}).get(key)
    return spec["provider"].get("arguments", {}) if isinstance(spec, dict) and "provider" in spec else {}


_AVAILABILITY_PROBES = frozenset({"availability", "seconds_until_availability"})
_ROWS_PROBES = frozenset({"rows_lost", "seconds_until_no_rows_lost", "seconds_until_pipeline_caught_up"})


def _held(journal: Mapping[str, Any]) -> set[str]:
    """Which bounds besides the MTTR the experiment's hypothesis holds: ``availability``, ``rows_lost``."""
    hypothesis = (journal.get("experiment") or {}).get("steady-state-hypothesis") or {}
    funcs = {str(p.get("provider", {}).get("func", "")) for p in hypothesis.get("probes") or []}
    return {
        name for name, probes in (("availability", _AVAILABILITY_PROBES), ("rows_lost", _ROWS_PROBES)) if funcs & probes
    }


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
    seconds = [
        float(p["output"])
        for p in probes
        if _func(p).startswith("seconds_until_") and p.get("status") == "succeeded" and p.get("output") is not None
    ]
    recovered = bool(seconds) and all(p.get("status") == "succeeded" for p in probes if _func(p).startswith("seconds_"))
    availability = next(
        (float(p["output"]) for p in probes if _func(p) == "availability" and p.get("output") is not None), None
    )
    rows_lost = next(
        (int(p["output"]) for p in probes if _func(p) == "rows_lost" and p.get("output") is not None), None
    )
    failures = [_failure(p) for p in probes if not p.get("tolerance_met", True)]
    before = (journal.get("steady_states") or {}).get("before") or {}
    failures += [
        f"before the fault: {_failure(p)}" for p in before.get("probes") or [] if not p.get("tolerance_met", True)
    ]
    failures += [f"method: {_failure(r)}" for r in journal.get("run") or [] if r.get("status") == "failed"]
    failures += [f"rollback: {_failure(r)}" for r in journal.get("rollbacks") or [] if r.get("status") == "failed"]
    status, deviated = str(journal.get("status")), bool(journal.get("deviated"))
    injected = all(
        r.get("status") == "succeeded" for r in journal.get("run") or [] if r["activity"]["type"] == "action"
    )
    met = status == "completed" and not deviated and before.get("steady_state_met", False) and bool(probes) and injected
    held = _held(journal)
    if not met and not failures:
        failures.append(f"experiment {status}{' (deviated)' if deviated else ''}")
    return ExperimentResult(
        name=name,
        title=str((journal.get("experiment") or {}).get("title", name)),
        verdict="met" if met else "missed",
        status=status,
        deviated=deviated,
        mttr_seconds=round(max(seconds), 2) if recovered else None,
        mttr_sla_seconds=float(slas["mttr_seconds"]),
        availability=availability if availability is not None else measured.get("availability"),
        availability_sla=float(slas["availability"]) if "availability" in held else None,
        rows_lost=rows_lost if rows_lost is not None else measured.get("rows_lost"),
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
    from chaos.data.probes import rows_lost
    from chaos.workload import read_outcomes

    out: dict[str, Any] = {}
    window = _fault_window(journal)
    if window is not None:
        outcomes = read_outcomes(env["SELFHEAL_CHAOS_TRAFFIC_LOG"], start=window[0], end=window[1])
        if outcomes:
            out["availability"] = round(sum(o.ok for o in outcomes) / len(outcomes), 4)
    with contextlib.suppress(Exception):  # a lake mid-repair: report nothing rather than a wrong number
        out["rows_lost"] = rows_lost(env["SELFHEAL_CHAOS_LANDING"], env["SELFHEAL_CHAOS_LAKE"])
    return out


def service_levels(experiment: Mapping[str, Any], config_path: str) -> dict[str, Any]:
    """The bounds an experiment is held to (its MTTR by name, then cause, then default)."""
    from chaos import sla

    names = _sla_config(experiment, "mttr_seconds").get("names") or []
    levels = sla.service_levels(config_path)
    return {
        "mttr_seconds": sla.mttr_seconds(config_path, list(names)),
        "availability": levels["availability"],
        "rows_lost": levels["rows_lost"],
    }


# -- reporting ----------------------------------------------------------------------------
def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


COLUMNS = ("fault", "MTTR (s)", "SLA", "availability", "rows lost", "verdict")


def _sla_text(r: ExperimentResult) -> str:
    parts = [f"MTTR <= {r.mttr_sla_seconds:g} s"]
    if r.availability_sla is not None:
        parts.append(f"availability >= {r.availability_sla:g}")
    if r.rows_lost_sla is not None:
        parts.append(f"rows lost <= {r.rows_lost_sla}")
    return ", ".join(parts)


def table_rows(result: SuiteResult) -> list[list[str]]:
    return [
        [
            r.name,
            _fmt(r.mttr_seconds, ".1f"),
            _sla_text(r),
            _fmt(r.availability, ".4f"),
            _fmt(r.rows_lost, "d"),
            {"met": "MET", "missed": "MISSED", "skipped": "skipped"}[r.verdict],
        ]
        for r in result.results
    ]


def render_table(result: SuiteResult) -> str:
    """The SLA table as fixed-width text (what the command line prints)."""
    rows = [list(COLUMNS), *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _verdict_line(result: SuiteResult) -> str:
    ran = [r for r in result.results if r.verdict != "skipped"]
    if result.passed:
        return f"All {len(ran)} experiments met their SLA (healing {'on' if result.healing_enabled else 'off'})."
    return (
        f"{len(result.missed)} of {len(ran)} experiments missed their SLA "
        f"(healing {'on' if result.healing_enabled else 'off'}): {', '.join(result.missed)}."
    )


def render_markdown(result: SuiteResult) -> str:
    """The report: the SLA table, then what went wrong where."""
    lines = [
        f"# Chaos suite {result.run_id}",
        "",
        _verdict_line(result),
        "",
        "MTTR counts from the fault's injection to the moment every recovery condition held.",
        "Availability: share of the sandbox clients' predictions answered from the fault to the check",
        "(held to the SLA only where the experiment says so; a killed server is down until restarted).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in table_rows(result)),
    ]
    for r in result.results:
        if r.failures:
            lines += ["", f"## {r.name}: {r.verdict}", "", f"{r.title}", ""]
            lines += [f"- {failure}" for failure in r.failures]
    if result.acknowledged:
        lines += ["", "## Escalations acknowledged by the suite between experiments", ""]
        lines += [f"- {line}" for line in result.acknowledged]
    return "\n".join(lines) + "\n"


def render_html(result: SuiteResult) -> str:
    """The same report as a standalone HTML page."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = []
    for r, row in zip(result.results, table_rows(result), strict=True):
        colour = {"met": "#e6f4ea", "missed": "#fce8e6", "skipped": "#f1f3f4"}[r.verdict]
        cells = "".join(f"<td>{esc(cell)}</td>" for cell in row)
        body.append(f'<tr style="background:{colour}" title="{esc(r.title)}">{cells}</tr>')
    details = []
    for r in result.results:
        if r.failures:
            items = "".join(f"<li>{esc(f)}</li>" for f in r.failures)
            details.append(f"<h2>{esc(r.name)}: {esc(r.verdict)}</h2><p>{esc(r.title)}</p><ul>{items}</ul>")
    if result.acknowledged:
        items = "".join(f"<li>{esc(line)}</li>" for line in result.acknowledged)
        details.append(f"<h2>Escalations acknowledged by the suite between experiments</h2><ul>{items}</ul>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Chaos suite {esc(result.run_id)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Chaos suite {esc(result.run_id)}</h1><p>{esc(_verdict_line(result))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{''.join(details)}</body></html>\n"
    )


def record_runs(lake: Lake, result: SuiteResult, journals: Mapping[str, Mapping[str, Any]]) -> int:
    """Append one row per experiment to ``chaos_runs`` (exactly once per suite run and experiment)."""

    def ts(value: str) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    written = 0
    for r in result.results:
        row = {
            "suite_run": result.run_id,
            "experiment": r.name,
            "title": r.title,
            "started_at": ts(r.started_at),
            "ended_at": ts(r.ended_at),
            "status": r.status,
            "deviated": r.deviated,
            "verdict": r.verdict,
            "mttr_seconds": r.mttr_seconds,
            "mttr_sla_seconds": r.mttr_sla_seconds,
            "availability": r.availability,
            "availability_sla": r.availability_sla,
            "rows_lost": r.rows_lost,
            "rows_lost_sla": r.rows_lost_sla,
            "healing_enabled": result.healing_enabled,
            "failures": json.dumps(r.failures),
            "journal": json.dumps(journals.get(r.name, {}), default=str),
        }
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        written += lake.append_once(CHAOS_RUNS, table, key=f"chaos:{result.run_id}:{r.name}").rows
    return written


# -- the flow -------------------------------------------------------------------------------
def sandbox_environment(root: str) -> dict[str, str]:
    """What the experiments read: ``SELFHEAL_CHAOS_*`` and the sandbox's admin token.

    Built where it is used, so the token never travels as a Prefect parameter.
    """
    from chaos.sandbox import Sandbox

    box = Sandbox(Path(root))
    return {**box.environment(), "SELFHEAL_CHAOS_PROJECT_CONFIG": str(box.config_path)}


@task(name="chaos-sandbox-up", cache_policy=NONE)
def sandbox_up_task(cfg: SelfhealConfig, root: str) -> str:
    """Build and start the sandbox (stopping one left there first); return its folder."""
    from chaos.sandbox import Sandbox

    box = Sandbox(Path(root), project_config=Path(cfg.source_path) if cfg.source_path else None)
    box.healing_enabled = cfg.healing.enabled
    box.down()
    box.up()
    return str(box.root)


@task(name="chaos-experiment", cache_policy=NONE)
def experiment_task(path: str, root: str) -> dict[str, Any]:
    """Run one experiment against the sandbox under ``root``; its journal."""
    return run_one(Path(path), sandbox_environment(root))


def _skipped(name: str, title: str, reason: str, slas: Mapping[str, Any]) -> ExperimentResult:
    return ExperimentResult(
        name=name,
        title=title,
        verdict="skipped",
        status="skipped",
        deviated=False,
        mttr_seconds=None,
        mttr_sla_seconds=float(slas["mttr_seconds"]),
        availability=None,
        availability_sla=None,
        rows_lost=None,
        rows_lost_sla=None,
        failures=[reason],
    )


def run_suite(cfg: SelfhealConfig, names: Sequence[str] = (), sandbox_root: str | None = None) -> SuiteResult:
    """Sandbox up, every experiment, reports, sandbox down (see the module docstring)."""
    from chaoslib.loader import load_experiment

    from chaos.sandbox import Sandbox

    paths = experiment_paths(names)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    root = sandbox_root or str(Path(cfg.home) / "chaos" / "sandbox")
    reports = Path(cfg.home) / "reports"
    log = _logger()
    result = SuiteResult(run_id, cfg.healing.enabled)
    journals: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    sandbox_up_task(cfg, root)
    env = sandbox_environment(root)
    try:
        log.info("sandbox up in %.0fs; running %d experiments", time.monotonic() - started, len(paths))
        for path in paths:
            experiment = load_experiment(str(path))
            slas = service_levels(experiment, env["SELFHEAL_CHAOS_PROJECT_CONFIG"])
            reason = skip_reason(experiment)
            if reason:
                result.results.append(_skipped(path.stem, experiment["title"], reason, slas))
                log.warning("%s: skipped: %s", path.stem, reason)
                continue
            if result.results:
                _settle(Sandbox(Path(root)), env, log, incidents=cfg.healing.enabled)
                last = result.results[-1].name
                result.acknowledged += _acknowledge_escalations(env["SELFHEAL_CHAOS_LAKE"], last, log)
            journal = experiment_task(str(path), root)
            journals[path.stem] = journal
            outcome = summarize(path.stem, journal, slas, measure(journal, env))
            result.results.append(outcome)
            log.info("%s: %s (MTTR %s s)", path.stem, outcome.verdict, outcome.mttr_seconds)
    finally:
        Sandbox(Path(root)).down()
    reports.mkdir(parents=True, exist_ok=True)
    folder = reports / f"chaos-{run_id}"
    folder.mkdir(exist_ok=True)
    for name, journal in journals.items():
        (folder / f"{name}.json").write_text(json.dumps(journal, indent=2, default=str))
    result.report_markdown = str(reports / f"chaos-{run_id}.md")
    result.report_html = str(reports / f"chaos-{run_id}.html")
    Path(result.report_markdown).write_text(render_markdown(result))
    Path(result.report_html).write_text(render_html(result))
    record_runs(Lake(cfg.lake.root, cfg.lake.storage_options or None), result, journals)
    log.info("chaos suite %s done in %.0fs: %s", run_id, time.monotonic() - started, _verdict_line(result))
    return result


def _settle(box: Any, env: Mapping[str, str], log: Any, incidents: bool, timeout: float = SETTLE_SECONDS) -> None:
    """Wait (a while) for the aftermath of the last experiment: one experiment's leftovers are not the next one's fault.

    Until no pipeline run is going or due, and (with healing on: nothing would close them
    otherwise) until the healer has closed every incident.
    """
    from chaos.incidents.probes import open_incidents

    deadline, busy = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        busy = box.pipeline_busy() or (
            f"{n} incident(s) open" if incidents and (n := open_incidents(env["SELFHEAL_CHAOS_LAKE"])) else None
        )
        if busy is None:
            return
        time.sleep(1.0)
    log.warning("still not settled after %.0fs (%s); going on", timeout, busy)


def _acknowledge_escalations(lake_root: str, after: str, log: Any) -> list[str]:
    """Acknowledge the sandbox's escalated incidents (the experiment that escalated is judged already)."""
    from checkpoints.incidents import IncidentLog, State

    incidents = IncidentLog(Lake(lake_root))
    taken = []
    for incident in incidents.incidents():
        if incident.state == State.ESCALATED and not incident.acknowledged:
            incidents.acknowledge(incident, "the chaos suite", f"between experiments, after {after}")
            taken.append(f"{incident.id} ({incident.cause}), escalated during or after {after}")
            log.warning("acknowledged escalated incident %s (%s) after %s", incident.id, incident.cause, after)
    return taken


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run (tests, scripts)
        return logger


@flow(name="selfheal-chaos-suite", log_prints=False)
def chaos_suite_flow(
    names: list[str] | None = None, config_path: str | None = None, sandbox_root: str | None = None
) -> SuiteResult:
    """Run the chaos suite against a fresh sandbox; fail when an experiment misses its SLA."""
    cfg = load_config(config_path)
    result = run_suite(cfg, names or (), sandbox_root)
    create_markdown_artifact(key="chaos-suite", markdown=render_markdown(result), description=_verdict_line(result))
    if not result.passed:
        raise SLAMissed(result)
    return result


# -- command line ----------------------------------------------------------------------------
def cli_chaos_run(args: argparse.Namespace) -> int:
    """``selfheal chaos run [NAME ...] [--json PATH]``: print the SLA table; exit 1 when an SLA is missed."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.getLogger("chaostoolkit").setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    experiment_paths(args.names)  # unknown names fail before anything starts
    state = chaos_suite_flow(names=list(args.names), return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SLAMissed):
        result = outcome.result
    elif isinstance(outcome, SuiteResult):
        result = outcome
    else:
        raise outcome if isinstance(outcome, BaseException) else SelfhealError(f"chaos suite ended {state.type}")
    out = sys.stdout
    out.write(f"{render_table(result)}\n\n{_verdict_line(result)}\nreport: {result.report_markdown} (and .html)\n")
    if args.json:
        text = json.dumps(result.to_dict(), indent=2)
        if args.json == "-":
            out.write(text + "\n")
        else:
            Path(args.json).write_text(text + "\n")
    sys.stdout.flush()
    return 0 if result.passed else 1
