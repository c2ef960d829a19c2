"""The monitor flow: read what is new, run the detectors, record, and raise signals.

Each run reads everything new since its watermarks (the inference log, the
feedback labels, the server's ``/metrics``, the tables' freshness), judges it
with ``flows.monitor.window.assess``, appends the metric series to the Delta
``metrics`` table together with its state (crash-safe: see
``flows.monitor.state``), publishes a markdown artifact, and returns the due
``Signal``s for the healer.

Tables read (the contract with serving and the pipeline):

- ``inference_log``: feature columns plus ``_request_id``, ``_ts`` (timestamp us UTC),
  ``_model_version``, ``_served_by`` (primary|fallback|baseline), ``_prediction``,
  ``_score`` (nullable), ``_latency_ms``.
- ``feedback``: ``request_id``, ``label`` (float64), ``ts`` (timestamp us UTC).
- ``batch_log``: only whether it exists (a lake fed in batch only has no live feed
  to go stale); landed batches are judged by ``batch_pass`` when they land.
- ``silver``: the training features (reference), at the champion's
  ``selfheal.silver_version`` tag if set, else its newest version.

Tables written: ``metrics`` (long format: ``ts, name, value, labels`` JSON,
``window_start, window_end, run``) and ``prediction_reference`` (the first
predictions of each model version; after a mark in ``prediction_reference_resets``,
which the healer writes for a version it forgot, the first ones served since).

The steps themselves are plain functions in ``flows.monitor.passes`` (re-exported
here), which ``monitor_pass`` calls without Prefect: the healer's ticks and a one-shot
``selfheal monitor`` without a Prefect API run that.

Example:
    >>> signals = monitor_flow(lake_root=".selfheal/lake", serving_url="http://127.0.0.1:8765")
    >>> [s.kind for s in signals]
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from checkpoints import Lake
from flows.monitor.detectors import MonitorThresholds
from flows.monitor.detectors.performance import Task
from flows.monitor.passes import (
    INITIAL_LOOKBACK,
    PREDICTION_REFERENCE,
    SILVER,
    Champion,
    baseline_metrics,
    batch_pass,
    champion_context,
    emit_signal,
    monitor_pass,
    prediction_reference,
    read_window,
    reference_profile,
)
from flows.monitor.signals import Signal
from flows.monitor.state import commit_run, load_state
from flows.monitor.window import Assessment, MonitorWindow, assess

__all__ = [
    "INITIAL_LOOKBACK",
    "PREDICTION_REFERENCE",
    "SILVER",
    "Champion",
    "baseline_metrics",
    "batch_pass",
    "champion_context",
    "monitor_flow",
    "monitor_pass",
    "prediction_reference",
    "read_window",
    "reference_profile",
    "render_markdown",
]


# -- reporting --------------------------------------------------------------------
def render_markdown(result: Assessment, window: MonitorWindow) -> str:
    """The run's artifact: the signals, then the drift table."""
    lines = [
        f"# Monitor run {result.state.seq}",
        f"Window `{window.start.isoformat()}` .. `{window.end.isoformat()}`, "
        f"{window.inference.num_rows} new predictions.",
        "",
        "## Signals",
    ]
    if not result.signals:
        lines.append("None: nothing crossed its threshold.")
    else:
        lines += ["| kind | severity | evidence |", "|---|---|---|"]
        for s in result.signals:
            ev = json.dumps(dict(s.evidence), default=str)
            lines.append(f"| {s.kind.value} | {s.severity.value} | `{ev[:300]}` |")
    for title, report in (("Data drift", result.drift), ("Prediction drift", result.prediction_drift)):
        if report is None:
            continue
        lines += [
            "",
            f"## {title}: {'DRIFT' if report.drifted else 'no drift'} (share {report.drift_share:.2f})",
            "| feature | test | statistic | p (adj.) | effect | PSI | missing | drifted |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in sorted(report.features.values(), key=lambda f: -f.effect_size):
            lines.append(
                f"| {f.name} | {f.test} | {f.statistic:.4g} | {f.p_adjusted:.3g} | {f.effect_size:.3f} | "
                f"{f.psi:.3f} | {f.missing_share_current:.3f} | {'yes' if f.drifted else ''} |"
            )
    return "\n".join(lines)


# -- tasks and flow -----------------------------------------------------------------
# The flow's steps are the plain functions ``monitor_pass`` calls, as Prefect tasks.
load_state_task = task(name="monitor-load-state", cache_policy=NONE)(load_state)
champion_task = task(name="monitor-champion", cache_policy=NONE)(champion_context)
read_task = task(name="monitor-read", cache_policy=NONE)(read_window)
assess_task = task(name="monitor-assess", cache_policy=NONE)(assess)


@task(name="monitor-commit", cache_policy=NONE)
def commit_task(lake: Lake, result: Assessment) -> bool:
    return commit_run(lake, result.state, result.rows)


@task(name="monitor-publish", cache_policy=NONE)
def publish_task(result: Assessment, window: MonitorWindow) -> None:
    create_markdown_artifact(
        markdown=render_markdown(result, window),
        key="selfheal-monitor",
        description=f"monitor run {result.state.seq}: {len(result.signals)} signal(s)",
    )


@flow(name="selfheal-monitor")
def monitor_flow(
    lake_root: str,
    thresholds: dict[str, Any] | None = None,
    serving_url: str | None = None,
    model_name: str | None = None,
    tracking_uri: str | None = None,
    ml_task: Task = "binary",
    target: str | None = None,
    storage_options: dict[str, str] | None = None,
    now: datetime | None = None,
) -> list[Signal]:
    """Watch the lake and the server once and return the signals due.

    Args:
        lake_root: the lake (local folder or object-store URI).
        thresholds: ``selfheal.yaml``'s ``thresholds`` mapping (defaults for unset keys).
        serving_url: the model server; None skips the ``/metrics`` scrape.
        model_name: registered model whose ``champion`` gives the reference and baseline.
        tracking_uri: MLflow tracking URI.
        ml_task: ``binary``, ``multiclass`` or ``regression``.
        target: the label column of silver (left out of the drift reference).
        storage_options: object-store options for the lake.
        now: the run's clock (tests); default the current time.
    """
    log = get_run_logger()
    limits = MonitorThresholds.from_mapping(thresholds)
    lake = Lake(lake_root, storage_options)
    state = load_state_task(lake)
    champion = champion_task(model_name, tracking_uri)
    window = read_task(lake, state, limits, champion, serving_url, ml_task, now or datetime.now(UTC), target)
    result = assess_task(window, state, limits)
    committed = commit_task(lake, result)
    publish_task(result, window)
    for signal in result.signals:
        log.warning("signal: %s", signal.summary())
        emit_signal(signal)
    log.info("monitor run %d: %d signal(s), committed=%s", result.state.seq, len(result.signals), committed)
    return result.signals
