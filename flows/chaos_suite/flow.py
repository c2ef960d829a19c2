"""The chaos suite: inject every fault into a sandboxed selfheal, measure recovery, hold it to the SLA.

One flow run:

1. builds a sandbox (``chaos.sandbox``: its own config, lake, landing zone, MLflow store,
   Prefect server, model server, clients, pipeline schedule and healer) from the
   project's ``selfheal.yaml`` (its ``data``, ``trainer``, ``gate``, ``healing`` and ``slas``);
2. runs each experiment of ``chaos/experiments`` through chaoslib's API, one after the
   other, with the sandbox's locations in ``SELFHEAL_CHAOS_*`` (with healing on, it first
   waits a little for the healer to close what the previous experiment opened);
3. reads each journal (``journal``): the MTTR is the longest ``seconds_until_*`` output of the
   hypothesis after the method (each counts from the fault's injection, so the longest
   is when every recovery condition held), availability and rows lost come from their
   probes or, where an experiment has none, from the sandbox's client log and lake;
4. stops the sandbox, appends one row per experiment (verdict and whole journal) to the
   ``chaos_runs`` Delta table of the project's lake, publishes a markdown artifact, writes
   a report (markdown and HTML) under ``<home>/reports`` (``report``);
5. fails (``SLAMissed``) when any experiment missed its SLA, naming them.

Example:
    >>> result = run_suite(load_config(), names=["serving-kill-worker"])
    >>> print(render_table(result))

From the command line: ``selfheal chaos run [NAME ...] [--json PATH]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import chaoslib.run
from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
from chaoslib.loader import load_experiment
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from chaos import sla
from chaos.incidents.probes import open_incidents
from chaos.sandbox import Sandbox
from checkpoints import Lake
from checkpoints.decisions import DecisionLog
from checkpoints.exceptions import CheckpointError, SelfhealError
from checkpoints.incidents import IncidentLog, State
from flows.chaos_suite.journal import ExperimentResult, SuiteResult, measure, summarize
from flows.chaos_suite.matrix import ExperimentSpec, MatrixResult, experiment_spec
from flows.chaos_suite.report import (
    record_runs,
    render_html,
    render_markdown,
    render_matrix_markdown,
    verdict_line,
)
from flows.config import SelfhealConfig, load_config
from serving import processes

logger = logging.getLogger(__name__)

#: Longest wait between experiments for the healer to close what the last one opened.
SETTLE_SECONDS = 45.0
EXPERIMENTS = Path(__file__).resolve().parents[2] / "chaos" / "experiments"
#: Run order: faults that leave no trace first; those that change the data or the model last.
ORDER = (
    "serving-kill-worker",
    "serving-kill-replica",
    "serving-hang-worker",
    "serving-kill-server",
    "registry-tracking-store-unreachable",
    "registry-tracking-store-down-long",
    "data-corrupt-truncate",
    "data-corrupt-garbage",
    "data-corrupt-schema",
    "schema-renamed-column",
    "data-corrupt-nulls",
    "data-nested-column",
    "data-partial-write",
    "data-resent-rows",
    "data-non-file-entry",
    "batch-output-write-failure",
    "pipeline-kill-mid-stage",
    "lake-torn-commit",
    "network-throttle-serving",
    "network-cut-serving",
    "network-cut-tracking",
    "registry-bad-model",
    "registry-foreign-artifact",
    "approval-held-rollback",
    "release-canary-worse",
    # Its repair is a rollback to @previous, which must have a golden set: a version the
    # pipeline promoted (the data experiments' batches leave one). Before the drift
    # experiments: after those the clean stream is a real shift for the champion.
    "served-model-mismatch",
    "config-drift",
    # Concept before covariate: a model retrained on shifted inputs makes the clean stream
    # put back by the covariate rollback a real shift, which would be the next experiment's.
    "data-drift-concept",
    "data-drift-covariate",
)


class SLAMissed(SelfhealError):
    """One or more experiments missed their SLA.

    Attributes:
        result: the whole suite result (every experiment, met or not).
    """

    def __init__(self, result: SuiteResult) -> None:
        self.result = result
        super().__init__(f"chaos suite: SLA missed by {', '.join(result.missed)}")


# -- experiments ------------------------------------------------------------------------
def experiments_folder(profile: str = "embedded") -> Path:
    """Where a profile's experiments are: ``chaos/experiments`` (embedded), ``chaos/experiments/production``."""
    return EXPERIMENTS / "production" if profile == "production" else EXPERIMENTS


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
def _environment(values: Mapping[str, str], hide_overrides: bool = True) -> Iterator[None]:
    """``values`` in this process's environment for the block (and the caller's config overrides hidden)."""
    hidden = [k for k in _config_overrides() if k not in values] if hide_overrides else []
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

    original = chaoslib.run.exit_signals
    chaoslib.run.exit_signals = contextlib.nullcontext
    try:
        yield
    finally:
        chaoslib.run.exit_signals = original


def run_one(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Run one experiment with chaoslib (as ``chaos run`` does) and return its journal."""

    with _environment(env):
        experiment = load_experiment(str(path))
        ensure_experiment_is_valid(experiment)
        strategy = (experiment.get("runtime") or {}).get("rollbacks", {}).get("strategy", "default")
        settings = {"runtime": {"rollbacks": {"strategy": strategy}, "hypothesis": {"strategy": "default"}}}
        with _signals_allowed():
            journal: dict[str, Any] = run_experiment(experiment, settings=settings)
    return journal


def _sla_config(experiment: Mapping[str, Any], key: str) -> Any:
    spec = (experiment.get("configuration") or {}).get(key)
    return spec["provider"].get("arguments", {}) if isinstance(spec, dict) and "provider" in spec else {}


def service_levels(experiment: Mapping[str, Any], config_path: str) -> dict[str, Any]:
    """The bounds an experiment is held to (its MTTR by name, then cause, then default)."""

    names = _sla_config(experiment, "mttr_seconds").get("names") or []
    levels = sla.service_levels(config_path)
    return {
        "mttr_seconds": sla.mttr_seconds(config_path, list(names)),
        "availability": levels["availability"],
        "rows_lost": levels["rows_lost"],
    }


# -- the flow -------------------------------------------------------------------------------
def sandbox_environment(root: str) -> dict[str, str]:
    """What the experiments read: ``SELFHEAL_CHAOS_*`` and the sandbox's admin token.

    Built where it is used, so the token never travels as a Prefect parameter.
    """

    box = Sandbox(Path(root))
    return {**box.environment(), "SELFHEAL_CHAOS_PROJECT_CONFIG": str(box.config_path)}


@task(name="chaos-sandbox-up", cache_policy=NONE)
def sandbox_up_task(cfg: SelfhealConfig, root: str, profile: str = "embedded") -> str:
    """Build and start the sandbox of ``profile`` (stopping one left there first); return its folder."""

    box = Sandbox(Path(root), project_config=Path(cfg.source_path) if cfg.source_path else None, profile=profile)
    box.healing_enabled = cfg.healing.enabled
    box.down()
    box.up()
    return str(box.root)


@task(name="chaos-experiment", cache_policy=NONE)
def experiment_task(path: str, root: str, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one experiment against the sandbox under ``root`` (with ``overrides`` in its environment); its journal."""
    return run_one(Path(path), {**sandbox_environment(root), **(overrides or {})})


def healing_off_overrides(experiment: Mapping[str, Any], spec: ExperimentSpec, off_seconds: float) -> dict[str, str]:
    """The healing-off pass's shorter MTTR bound for a ``healed`` experiment (it must miss; no need to wait long).

    An ``absorbed`` experiment keeps its own bound: it must meet it without the healer.
    """
    if spec.proves != "healed":
        return {}
    names = [*(_sla_config(experiment, "mttr_seconds").get("names") or []), "default"]
    return {"SELFHEAL_SLAS__MTTR_SECONDS": json.dumps(dict.fromkeys(names, off_seconds))}


#: The healing-off pass waits this many times the healer's own MTTR of the healing-on pass ...
HEALING_OFF_FACTOR = 3.0
#: ... but never less than this (a fast repair's few seconds are not a fair wait for a fault to undo itself).
HEALING_OFF_FLOOR_SECONDS = 10.0


def healing_off_bounds(on: SuiteResult, cap: float) -> dict[str, float]:
    """Per experiment, how long the healing-off pass waits for recovery before it calls the row MISSED.

    ``HEALING_OFF_FACTOR`` times the MTTR the same experiment had with the healer (at least
    ``HEALING_OFF_FLOOR_SECONDS``, at most ``cap``: ``slas.healing_off_mttr_seconds``), so the
    row reads "the healer repaired it in X s; without it, not repaired in 3X s". Experiments
    without a healing-on MTTR wait ``cap``.
    """
    return {
        r.name: min(cap, max(HEALING_OFF_FLOOR_SECONDS, HEALING_OFF_FACTOR * r.mttr_seconds))
        for r in on.results
        if r.mttr_seconds is not None and r.verdict == "met"
    }


def _skipped(name: str, title: str, reason: str, slas: Mapping[str, Any], proves: str) -> ExperimentResult:
    return ExperimentResult(
        proves=proves,
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


def run_suite(
    cfg: SelfhealConfig,
    names: Sequence[str] = (),
    sandbox_root: str | None = None,
    healing: bool | None = None,
    off_bounds: Mapping[str, float] | None = None,
    profile: str = "embedded",
) -> SuiteResult:
    """Sandbox up, every experiment, reports, sandbox down (see the module docstring).

    ``healing`` overrides ``cfg.healing.enabled`` for the sandbox (the matrix's two passes);
    ``off_bounds``: with healing off, a ``healed`` experiment's MTTR bound by name (default
    ``slas.healing_off_mttr_seconds``; see ``healing_off_bounds``); ``profile``: ``production``
    runs the experiments of ``chaos/experiments/production`` on ``selfheal up --profile production``.
    """
    if healing is not None:
        cfg = cfg.model_copy(update={"healing": cfg.healing.model_copy(update={"enabled": healing})})
    paths = experiment_paths(names, experiments_folder(profile))
    specs = {p.stem: experiment_spec(load_experiment(str(p))) for p in paths}  # a missing class fails first
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    root = sandbox_root or str(Path(cfg.home) / "chaos" / "sandbox")
    log = _logger()
    result = SuiteResult(run_id, cfg.healing.enabled)
    journals: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    sandbox_up_task(cfg, root, profile)
    env = sandbox_environment(root)
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    # The production sandbox's lake is on its S3 store: this process reads it between experiments too
    # (only there: with these variables set, a project lake on AWS S3 would be looked for on that store).
    stores = {k: v for k, v in env.items() if k.startswith(("AWS_", "MLFLOW_S3_"))}
    try:
        with _environment(stores, hide_overrides=False):
            log.info("sandbox up in %.0fs; running %d experiments", time.monotonic() - started, len(paths))
            for path in paths:
                off = (off_bounds or {}).get(path.stem, cfg.slas.healing_off_mttr_seconds)
                _run_experiment(path, specs[path.stem], cfg, root, env, result, journals, log, off)
    finally:
        if cfg.healing.enabled:  # the suite is the learned policy's training ground
            options = {k: v for k, v in stores.items() if k.startswith("AWS_")} or None
            harvested = harvest_decisions(env["SELFHEAL_CHAOS_LAKE"], lake, options)
            log.info("%d remedy decisions of the sandbox added to the decisions log", harvested)
        Sandbox(Path(root)).down()
    _write_reports(result, journals, Path(cfg.home) / "reports")
    record_runs(lake, result, journals)
    log.info("chaos suite %s done in %.0fs: %s", run_id, time.monotonic() - started, verdict_line(result))
    return result


def harvest_decisions(sandbox_lake: str, lake: Lake, sandbox_options: Mapping[str, str] | None = None) -> int:
    """Copy the sandbox's remedy decisions (with their outcomes) into the project's decisions log; how many were new.

    ``selfheal policy train`` learns from them. A sandbox whose lake cannot be read adds none (logged, not raised:
    the suite's verdicts stand without it).
    """
    try:
        found = DecisionLog(Lake(sandbox_lake, sandbox_options)).decisions("remedy")
        mine = DecisionLog(lake)
        return sum(mine.append(d) for d in found)
    except (CheckpointError, OSError) as exc:
        _logger().warning("could not copy the sandbox's decisions: %s", exc)
        return 0


def _run_experiment(
    path: Path,
    spec: ExperimentSpec,
    cfg: SelfhealConfig,
    root: str,
    env: Mapping[str, str],
    result: SuiteResult,
    journals: dict[str, dict[str, Any]],
    log: Any,
    off_seconds: float,
) -> None:
    """Run one experiment of the suite (after the last one's aftermath settled) and add its row to ``result``."""
    experiment = load_experiment(str(path))
    overrides = {} if cfg.healing.enabled else healing_off_overrides(experiment, spec, off_seconds)
    with _environment(overrides):
        slas = service_levels(experiment, env["SELFHEAL_CHAOS_PROJECT_CONFIG"])
    reason = skip_reason(experiment)
    if reason:
        result.results.append(_skipped(path.stem, experiment["title"], reason, slas, spec.proves))
        log.warning("%s: skipped: %s", path.stem, reason)
        return
    if result.results:
        _settle(Sandbox(Path(root)), env, log, incidents=cfg.healing.enabled)
        last = result.results[-1].name
        if not cfg.healing.enabled:  # nothing closes them: the next experiment's steady state would fail on them
            result.acknowledged += _close_leftovers(env["SELFHEAL_CHAOS_LAKE"], last, log)
        result.acknowledged += _acknowledge_escalations(env["SELFHEAL_CHAOS_LAKE"], last, log)
    journal = experiment_task(str(path), root, overrides)
    journals[path.stem] = journal
    measured = measure(journal, env, spec.expected_incidents)
    outcome = summarize(path.stem, journal, slas, measured, proves=spec.proves)
    result.results.append(outcome)
    log.info("%s (%s): %s (MTTR %s s)", path.stem, spec.proves, outcome.verdict, outcome.mttr_seconds)


def run_matrix(
    cfg: SelfhealConfig, names: Sequence[str] = (), sandbox_root: str | None = None, profile: str = "embedded"
) -> MatrixResult:
    """The suite with healing on, then with healing off (each on a fresh sandbox); one report of both."""
    root = sandbox_root or str(Path(cfg.home) / "chaos" / "sandbox")
    on = run_suite(cfg, names, root, healing=True, profile=profile)
    # A folder of its own: MLflow keeps SQLite engines per URI in this process, and one on a
    # rebuilt mlflow.db at the same path would still read the deleted file of the first pass.
    bounds = healing_off_bounds(on, cfg.slas.healing_off_mttr_seconds)
    off = run_suite(cfg, names, f"{root}-healing-off", healing=False, off_bounds=bounds, profile=profile)
    matrix = MatrixResult(on, off)
    reports = Path(cfg.home) / "reports"
    matrix.report_markdown = str(reports / f"chaos-matrix-{on.run_id}.md")
    matrix.report_html = str(reports / f"chaos-matrix-{on.run_id}.html")
    Path(matrix.report_markdown).write_text(render_matrix_markdown(matrix))
    Path(matrix.report_html).write_text(render_html(on, off))
    return matrix


def _write_reports(result: SuiteResult, journals: Mapping[str, Mapping[str, Any]], reports: Path) -> None:
    """Write the markdown and HTML reports and a folder of the journals; their paths go in ``result``."""
    folder = reports / f"chaos-{result.run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, journal in journals.items():
        (folder / f"{name}.json").write_text(json.dumps(journal, indent=2, default=str))
    result.report_markdown = str(reports / f"chaos-{result.run_id}.md")
    result.report_html = str(reports / f"chaos-{result.run_id}.html")
    Path(result.report_markdown).write_text(render_markdown(result))
    Path(result.report_html).write_text(render_html(result))


def _settle(box: Any, env: Mapping[str, str], log: Any, incidents: bool, timeout: float = SETTLE_SECONDS) -> None:
    """Wait (a while) for the aftermath of the last experiment: one experiment's leftovers are not the next one's fault.

    Until no pipeline run is going or due, and (with healing on: nothing would close them
    otherwise) until the healer has closed every incident.
    """

    busy: str | None = None

    def settled() -> bool:
        nonlocal busy
        busy = box.pipeline_busy() or (
            f"{n} incident(s) open" if incidents and (n := open_incidents(env["SELFHEAL_CHAOS_LAKE"])) else None
        )
        return busy is None

    try:
        processes.wait_until(settled, timeout, "the sandbox to settle", interval=1.0)
    except TimeoutError:
        log.warning("still not settled after %.0fs (%s); going on", timeout, busy)


def _close_leftovers(lake_root: str, after: str, log: Any) -> list[str]:
    """With healing off: escalate the incidents the last experiment left open, as on-call would take them over."""
    incidents = IncidentLog(Lake(lake_root))
    taken = []
    for incident in incidents.open_incidents():
        note = f"taken over by the chaos suite (healing off) after {after}"
        incidents.advance(incident, State.ESCALATED, detail=note)
        taken.append(f"{incident.id} ({incident.cause}), left open by {after} with healing off")
        log.warning("escalated incident %s (%s) left open by %s (healing off)", incident.id, incident.cause, after)
    return taken


def _acknowledge_escalations(lake_root: str, after: str, log: Any) -> list[str]:
    """Acknowledge the sandbox's escalated incidents (the experiment that escalated is judged already)."""

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
    except MissingContextError:  # outside a flow run (tests, scripts)
        return logger


class MatrixFailed(SelfhealError):
    """An experiment's verdicts with healing on and off are not the ones its class calls for.

    Attributes:
        result: the whole matrix (both passes).
    """

    def __init__(self, result: MatrixResult) -> None:
        self.result = result
        super().__init__("chaos matrix: " + "; ".join(result.problems))


@flow(name="selfheal-chaos-suite", log_prints=False)
def chaos_suite_flow(
    names: list[str] | None = None,
    config_path: str | None = None,
    sandbox_root: str | None = None,
    matrix: bool = False,
    profile: str = "embedded",
) -> SuiteResult | MatrixResult:
    """Run the chaos suite against a fresh sandbox; fail when an experiment misses its SLA.

    With ``matrix``: run it with healing on and with healing off, and fail when an
    experiment's verdicts are not the ones its class calls for (``MatrixFailed``).
    ``profile``: ``production`` runs the production topology's experiments on its stack.
    """
    cfg = load_config(config_path)
    if matrix:
        both = run_matrix(cfg, names or (), sandbox_root, profile)
        create_markdown_artifact(key="chaos-matrix", markdown=render_matrix_markdown(both))
        if not both.passed:
            raise MatrixFailed(both)
        return both
    result = run_suite(cfg, names or (), sandbox_root, profile=profile)
    create_markdown_artifact(key="chaos-suite", markdown=render_markdown(result), description=verdict_line(result))
    if not result.passed:
        raise SLAMissed(result)
    return result
