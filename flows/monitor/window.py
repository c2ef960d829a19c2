"""One monitor window judged: data in, signals + metric rows + next state out.

``assess`` is pure (no I/O, no Prefect): the flow in ``flows.monitor.flow`` reads
the lake and the server into a ``MonitorWindow``, calls ``assess``, and
persists what it returns. Every detector verdict passes the consecutive-window
rule before it becomes a ``Signal``; kinds not evaluated in a window (no new
drift window yet, no labels) leave their streaks untouched.

Example:
    >>> result = assess(window, load_state(lake), MonitorThresholds())
    >>> [s.kind for s in result.signals], len(result.rows)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from flows.monitor.detectors import (
    ConsecutiveWindows,
    DriftReport,
    ErrorCusum,
    MonitorThresholds,
    ReferenceProfile,
    SeriesHistory,
    check_freshness,
    check_missing_rows,
    check_performance,
    compare,
    robust_z,
)
from flows.monitor.detectors.performance import PerformanceCheck, Task, estimate_performance
from flows.monitor.detectors.streaming import ErrorKind
from flows.monitor.scrape import ServingSnapshot, deltas
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.monitor.state import MonitorState

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("_prediction", "_score")


@dataclass(frozen=True)
class MonitorWindow:
    """What one monitor run read.

    Attributes:
        start: the previous inference watermark (or the initial lookback).
        end: now minus the ingest lag: rows up to here are judged.
        now: when the run started.
        inference: inference-log rows with ``start < _ts <= end``.
        drift_start: start of the drift window (its own watermark).
        drift_rows: rows with ``drift_start < _ts <= end``, or None while fewer than ``min_window_rows``.
        labeled: feedback in ``(feedback watermark, end]`` joined with its predictions
            (columns ``label``, ``_prediction``, ``_score``, ``_model_version``, ``ts`` and the
            predictions' input features), oldest first.
        performance_start: start of the performance window (its own watermark).
        performance_rows: labeled rows in ``(performance_start, end]``, or None while fewer than ``min_labels``.
        serving: the ``/metrics`` scrape, if one was made and answered.
        serving_error: why the scrape failed (None: it answered, or no URL was given).
        last_commits: table -> time of its newest commit (None: never written), for freshness.
        reference: the training distribution (silver), profiled; None if there is no silver yet
            (or nothing to compare with it this run).
        prediction_rows: the drift rows the champion answered (``passes.champion_rows``), or
            None while fewer than ``min_window_rows``: what its predictions are tested on.
        prediction_reference: the first predictions of the current model version, profiled.
        baseline_metrics: the champion's validation metrics by name (per batch where known).
        baseline_spread: per metric, the standard deviation of the champion's quality between holdout batches.
        task: the model's task.
    """

    start: datetime
    end: datetime
    now: datetime
    inference: pa.Table
    drift_start: datetime
    drift_rows: pa.Table | None = None
    labeled: pa.Table | None = None
    performance_start: datetime | None = None
    performance_rows: pa.Table | None = None
    serving: ServingSnapshot | None = None
    serving_error: str | None = None
    last_commits: Mapping[str, datetime | None] = field(default_factory=dict)
    reference: ReferenceProfile | None = None
    prediction_rows: pa.Table | None = None
    prediction_reference: ReferenceProfile | None = None
    baseline_metrics: Mapping[str, float] = field(default_factory=dict)
    baseline_spread: Mapping[str, float] = field(default_factory=dict)
    task: Task = "binary"

    @classmethod
    def of_batch(
        cls,
        rows: pa.Table,
        labels: pa.Table | None,
        at: datetime,
        reference: ReferenceProfile | None,
        baseline_metrics: Mapping[str, float],
        baseline_spread: Mapping[str, float],
        task: Task,
    ) -> MonitorWindow:
        """A landed batch as one complete window: its scored ``rows`` and their ``labels``, judged at ``at``."""
        return cls(
            start=at,
            end=at,
            now=at,
            inference=rows.slice(0, 0),
            drift_start=at,
            drift_rows=rows,
            labeled=labels,
            performance_start=at,
            performance_rows=labels,
            reference=reference,
            baseline_metrics=dict(baseline_metrics),
            baseline_spread=dict(baseline_spread),
            task=task,
        )


@dataclass(frozen=True)
class Assessment:
    """What ``assess`` concluded.

    Attributes:
        signals: signals due this window (after the consecutive-window rule).
        rows: metric rows for the ``metrics`` table (labels as mappings).
        state: the state to hand to the next run.
        drift: the data-drift report, when a drift window was tested.
        prediction_drift: the prediction-drift report, when tested.
    """

    signals: list[Signal]
    rows: list[dict[str, Any]]
    state: MonitorState
    drift: DriftReport | None = None
    prediction_drift: DriftReport | None = None


class _Collector:
    """Accumulates metric rows and due signals for one window."""

    def __init__(self, window: MonitorWindow, state: MonitorState, t: MonitorThresholds) -> None:
        self.w, self.t = window, t
        self.seq = state.seq + 1
        self.rows: list[dict[str, Any]] = []
        self.signals: list[Signal] = []
        self.rule = ConsecutiveWindows(dict(t.consecutive), 1, dict(state.streaks))
        self.history = SeriesHistory.from_dict(state.history, t.anomaly.history)
        self.tested_drift: DriftReport | None = None
        self._input_shift: dict[str, Any] | None = None
        self._labeled: tuple[PerformanceCheck | None] | None = None

    def labeled_check(self) -> PerformanceCheck | None:
        """The window's labeled rows against the champion's baseline (None: too few labels). Computed once.

        Read twice: by the performance signal (``dropped``, with the between-batch allowance)
        and by the drift impact (``beyond_own_error``).
        """
        if self._labeled is None:
            self._labeled = (_labeled_check(self.w, self.t),)
        return self._labeled[0]

    def input_shift(self) -> dict[str, Any]:
        """Evidence for a quality verdict: did the inputs of the labeled predictions shift?

        Concept drift is P(y|x) changing while the inputs stay put; a covariate shift also
        makes errors rise, and its labels often arrive before a drift window has filled.
        So a quality verdict carries the drift test of the very predictions it was judged
        on (the labeled ones), or this run's drift window when that drifted. Computed once.
        """
        if self._input_shift is None:
            self._input_shift = input_shift(self.w, self.t, self.tested_drift)
        return self._input_shift

    def metric(
        self, name: str, value: float | None, labels: Mapping[str, Any] | None = None, start: datetime | None = None
    ) -> None:
        if value is not None and not math.isfinite(float(value)):
            value = None
        self.rows.append(
            {
                "ts": self.w.now,
                "name": name,
                "value": value,
                "labels": dict(labels or {}),
                "window_start": start or self.w.start,
                "window_end": self.w.end,
                "run": self.seq,
            }
        )

    def judge(
        self,
        kind: SignalKind,
        condition: bool,
        severity: Severity,
        evidence: Mapping[str, Any],
        start: datetime | None = None,
        key: str | None = None,
    ) -> None:
        """Pass a verdict through the consecutive-window rule; emit a signal when due."""
        rule_key = key or kind.value
        if not self.rule.observe(rule_key, condition):
            return
        streak = self.rule.streak(rule_key)
        signal = Signal(
            kind,
            severity,
            {**evidence, "windows_in_a_row": streak},
            Window(start or self.w.start, self.w.end),
            detected_at=self.w.now,
        )
        self.signals.append(signal)
        self.metric("signal", float(signal.severity.rank), {"kind": kind.value, "key": rule_key}, start)

    def anomaly(self, series: str, value: float | None, direction: str = "up") -> tuple[bool, dict[str, Any]]:
        """Judge ``value`` against the series' history, then add it to the history."""
        if value is None or not math.isfinite(value):
            return False, {}
        a = self.t.anomaly
        score = robust_z(
            self.history.values(series),
            value,
            z=a.z,
            direction=direction,  # type: ignore[arg-type]
            min_history=a.min_history,
            relative_floor=a.relative_floor,
            absolute_floor=a.absolute_floor.get(series, 0.0),
        )
        self.history.push(series, value)
        return score.anomalous, {"value": value, "median": score.center, "robust_z": score.z}


def assess(window: MonitorWindow, state: MonitorState, thresholds: MonitorThresholds) -> Assessment:
    """Run every detector on ``window`` and decide which signals are due.

    Args:
        window: what the run read.
        state: the previous run's state.
        thresholds: the gates.
    """
    c = _Collector(window, state, thresholds)
    counters = _serving(c, state)
    _operations(c)
    _freshness(c)
    drift, prediction = _drift(c)
    c.tested_drift = drift
    concept = _concept(c, state)
    _performance(c)
    c.metric("monitor.signals", float(len(c.signals)))
    c.metric("monitor.run", 1.0, {"rows": window.inference.num_rows})
    new_state = state.evolve(
        seq=c.seq,
        inference_watermark=window.end,
        drift_watermark=window.end if window.drift_rows is not None else state.drift_watermark or window.drift_start,
        feedback_watermark=window.end if window.labeled is not None else state.feedback_watermark,
        performance_watermark=(
            window.end if window.performance_rows is not None else state.performance_watermark or window.start
        ),
        concept=concept,
        history=c.history.to_dict(),
        streaks=dict(c.rule.streaks),
        counters=counters,
        last_run=window.now,
    )
    return Assessment(c.signals, c.rows, new_state, drift, prediction)


# -- serving ------------------------------------------------------------------
def _serving(c: _Collector, state: MonitorState) -> dict[str, float]:
    w, t = c.w, c.t
    if w.serving is None and w.serving_error is None:
        return dict(state.counters)
    down = w.serving is None
    c.metric("serving.up", 0.0 if down else 1.0)
    c.judge(SignalKind.SERVING_DOWN, down, Severity.CRITICAL, {"error": w.serving_error})
    if w.serving is None:
        return dict(state.counters)
    now = dict(w.serving.counters)
    d = deltas(now, state.counters) if state.counters else {}
    requests = d.get("requests", 0.0)
    errors = d.get("server_errors", 0.0)
    rate = errors / requests if requests > 0 else None
    c.metric("serving.requests", requests if d else None)
    c.metric("serving.error_rate", rate)
    c.metric("serving.model_errors", d.get("errors") if d else None)
    dropped = d.get("rows_dropped", 0.0)
    c.metric("serving.log_rows_dropped", dropped if d else None)
    c.judge(
        SignalKind.MISSING_ROWS,
        dropped > 0,
        Severity.WARNING,
        {"table": "inference_log", "rows_dropped": dropped, "source": "serving /metrics"},
        key="missing_rows:dropped",
    )
    hit, ev = c.anomaly("error_rate", rate)
    over = rate is not None and rate >= t.error_rate_max
    severity = Severity.CRITICAL if over else Severity.WARNING
    c.judge(SignalKind.ERROR_RATE, hit or over, severity, {**ev, "error_rate": rate, "requests": requests})
    opens = d.get("breaker_opens", 0.0)
    c.metric("serving.breaker_opens", opens if d else None)
    is_open = bool(w.serving.breaker_open) or opens > 0
    c.judge(
        SignalKind.BREAKER_OPEN,
        is_open,
        Severity.WARNING,
        {"opens": opens, "open_now": w.serving.breaker_open, "fallbacks": d.get("fallbacks")},
        key="breaker_open:serving",
    )
    return now


def _operations(c: _Collector) -> None:
    w, t = c.w, c.t
    rows = w.inference.num_rows
    seconds = max((w.end - w.start).total_seconds(), 1e-9)
    c.metric("rows.inference_log", float(rows), {"table": "inference_log"})
    rate = rows / seconds
    expected_rate = t.expected_rows_per_second.get("inference_log")
    past = c.history.values("rows_per_second")
    if expected_rate is None and len(past) >= t.anomaly.min_history:
        expected_rate = float(np.median(past))
    c.history.push("rows_per_second", rate)
    if expected_rate is not None:
        check = check_missing_rows(rows, expected_rate * seconds, t.missing_rows_tolerance)
        c.metric("rows.expected", check.expected, {"table": "inference_log"})
        c.judge(
            SignalKind.MISSING_ROWS,
            check.missing,
            Severity.WARNING,
            {"table": "inference_log", "observed": rows, "expected": check.expected, "shortfall": check.shortfall},
            key="missing_rows:inference_log",
        )
    if rows == 0:
        return
    names = set(w.inference.column_names)
    if "_latency_ms" in names:
        lat = np.asarray(w.inference.column("_latency_ms").to_numpy(zero_copy_only=False), dtype=np.float64)
        lat = lat[np.isfinite(lat)]
        p99 = float(np.quantile(lat, 0.99)) if lat.size else None
        c.metric("serving.latency_p99_ms", p99)
        hit, ev = c.anomaly("latency_p99_ms", p99)
        slo = t.latency_p99_ms_max is not None and p99 is not None and p99 > t.latency_p99_ms_max
        c.judge(SignalKind.LATENCY, hit or slo, Severity.CRITICAL if slo else Severity.WARNING, {**ev, "p99_ms": p99})
    if "_served_by" in names:
        served = w.inference.column("_served_by").to_pylist()
        share = sum(1 for s in served if s not in (None, "primary")) / rows
        c.metric("serving.fallback_share", share)
        hit, ev = c.anomaly("fallback_share", share)
        over = share >= t.fallback_share_max
        c.judge(
            SignalKind.BREAKER_OPEN,
            hit or over,
            Severity.CRITICAL if over else Severity.WARNING,
            {**ev, "fallback_share": share},
            key="breaker_open:fallback",
        )
    features = [n for n in names if not n.startswith("_")]
    if features:
        nulls = sum(_missing(w.inference.column(n)) for n in features) / (rows * len(features))
        c.metric("data.null_rate", nulls)
        hit, ev = c.anomaly("null_rate", nulls)
        c.judge(SignalKind.DATA_QUALITY, hit, Severity.WARNING, {**ev, "null_rate": nulls}, key="data_quality:nulls")


def _missing(column: pa.ChunkedArray) -> int:
    missing = int(column.null_count)
    if pa.types.is_floating(column.type):
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        missing = int(np.count_nonzero(~np.isfinite(values)))
    return missing


def _freshness(c: _Collector) -> None:
    for table, max_age in c.t.freshness_seconds.items():
        if table not in c.w.last_commits:
            continue
        f = check_freshness(table, c.w.last_commits[table], c.w.now, max_age)
        c.metric("freshness.age_seconds", f.age_seconds, {"table": table})
        c.judge(
            SignalKind.STALE_DATA,
            f.stale,
            Severity.WARNING,
            {"table": table, "age_seconds": f.age_seconds, "max_age_seconds": max_age},
            key=f"stale_data:{table}",
        )


# -- drift ----------------------------------------------------------------------
def _drift(c: _Collector) -> tuple[DriftReport | None, DriftReport | None]:
    w, t = c.w, c.t
    if w.drift_rows is None:
        return None, None
    report = None
    prediction = None
    if w.prediction_reference is not None and w.prediction_rows is not None:
        cols = [col for col in PREDICTION_COLUMNS if col in w.prediction_reference.columns]
        prediction = compare(w.prediction_reference, w.prediction_rows, t.prediction_drift, columns=cols)
        _drift_signal(c, "prediction_drift", SignalKind.PREDICTION_DRIFT, prediction)
    if w.reference is not None:
        report = compare(w.reference, w.drift_rows, t.drift)
        _drift_signal(c, "drift", SignalKind.DATA_DRIFT, report, _impact(c, prediction))
        issues = [
            {"feature": q.feature, "issue": q.issue, "value": q.value, "threshold": q.threshold}
            for q in report.quality_issues
        ]
        schema_broken = any(q["issue"] in ("missing_column", "type_changed") for q in issues)
        c.judge(
            SignalKind.DATA_QUALITY,
            bool(issues),
            Severity.CRITICAL if schema_broken else Severity.WARNING,
            {"issues": issues},
            start=w.drift_start,
            key="data_quality:features",
        )
    return report, prediction


def _impact(c: _Collector, prediction: DriftReport | None) -> dict[str, Any]:
    """Does the window's drift reach the model: its outputs moved, its estimated quality fell, or its labels say so?

    The estimate (CBPE, ``estimate_performance``) reads the champion's own scores on the
    drift window, so it needs no labels; it is recorded as ``performance.estimated.*``.
    It cannot see a model that is confidently wrong on a region it never saw; labels
    can. With the window's labeled rows (a landed batch's own labels, or live feedback),
    the drift is felt when quality on them is below the champion's baseline by more than
    ``max_drop`` and ``z`` of their own standard errors: the inputs have already moved, so
    the question is only whether the model is worse on them, not whether a batch may
    vary that much for no reason (the performance signal's between-batch allowance).
    """
    impact: dict[str, Any] = {"prediction_drift": bool(prediction is not None and prediction.drifted)}
    rows = c.w.drift_rows
    if rows is not None and {"_score", "_prediction"} <= set(rows.column_names):
        est = estimate_performance(
            rows.column("_score").to_numpy(zero_copy_only=False),
            rows.column("_prediction").to_numpy(zero_copy_only=False),
            c.w.task,
            c.w.baseline_metrics,
            c.t.performance,
            c.w.baseline_spread,
        )
        if est is not None:
            for name, value in est.metrics.items():
                c.metric(f"performance.estimated.{name}", value, {"rows": est.rows}, c.w.drift_start)
            impact["estimated"] = dict(est.metrics)
            impact["estimated_drop"] = est.dropped
            if est.worst is not None:
                impact["estimated_worse_by"] = {est.worst: est.worse_by}
    labeled = c.labeled_check()
    if labeled is not None and labeled.worst is not None:
        impact["labeled_drop"] = labeled.beyond_own_error
        impact["labeled_worse_by"] = {labeled.worst.metric: labeled.worst.worse_by}
    if prediction is None and "estimated_worse_by" not in impact and "labeled_drop" not in impact:
        # Neither the outputs nor the quality against a baseline could be measured: unknown,
        # so the drift is treated as reaching the model.
        impact["reaches_model"] = None
    else:
        impact["reaches_model"] = (
            impact["prediction_drift"] or bool(impact.get("estimated_drop")) or bool(impact.get("labeled_drop"))
        )
    return impact


def _drift_signal(
    c: _Collector, prefix: str, kind: SignalKind, report: DriftReport, impact: dict[str, Any] | None = None
) -> None:
    """Record a drift report's metric rows and judge its signal on the drift window.

    With ``impact`` (data drift), severity ranks by what the drift does to the model:
    CRITICAL when it moves the model's outputs or its estimated quality, WARNING when
    the inputs moved and the model did not notice (when neither could be measured, the
    report's own severity); the evidence carries the estimate.
    """
    _report_rows(c, prefix, report, c.w.drift_start)
    severity = Severity(report.severity) if report.drifted else Severity.INFO
    evidence = _drift_evidence(report)
    if impact is not None:
        evidence["impact"] = impact
        if report.drifted and impact["reaches_model"] is not None:
            severity = Severity.CRITICAL if impact["reaches_model"] else Severity.WARNING
    c.judge(kind, report.drifted, severity, evidence, start=c.w.drift_start)


def _drift_evidence(report: DriftReport) -> dict[str, Any]:
    top = report.drifted_features[:10]
    return {
        "drift_share": report.drift_share,
        "drifted_features": top,
        "rows_current": report.rows_current,
        "features": {
            name: {
                "statistic": report.features[name].statistic,
                "p_adjusted": report.features[name].p_adjusted,
                "effect_size": report.features[name].effect_size,
                "psi": report.features[name].psi,
            }
            for name in top
        },
    }


def _report_rows(c: _Collector, prefix: str, report: DriftReport, start: datetime) -> None:
    c.metric(f"{prefix}.share", report.drift_share, start=start)
    for f in report.features.values():
        labels = {"feature": f.name, "test": f.test}
        c.metric(f"{prefix}.statistic", f.statistic, labels, start)
        c.metric(f"{prefix}.p_adjusted", f.p_adjusted, labels, start)
        c.metric(f"{prefix}.effect_size", f.effect_size, labels, start)
        c.metric(f"{prefix}.psi", f.psi, labels, start)
        c.metric(f"{prefix}.missing_share", f.missing_share_current, labels, start)


def input_shift(window: MonitorWindow, t: MonitorThresholds, tested: DriftReport | None) -> dict[str, Any]:
    """``inputs_drifted`` (and which features) for the predictions behind this run's labels.

    ``tested`` is this run's drift-window report: when it drifted, the inputs shifted.
    Otherwise the labeled predictions' own features are tested against the reference
    (the performance window when it has enough labels, else the new labels).
    """
    if tested is not None and tested.drifted:
        return {
            "inputs_drifted": True,
            "input_drifted_features": tested.drifted_features[:10],
            "inputs_tested_on": "drift window",
        }
    rows = window.performance_rows if window.performance_rows is not None else window.labeled
    if window.reference is None or rows is None:
        return {"inputs_drifted": None, "inputs_tested_on": "nothing (no reference or no labeled inputs)"}
    columns = [name for name in window.reference.columns if name in rows.column_names]
    if not columns:
        return {"inputs_drifted": None, "inputs_tested_on": "nothing (labeled rows carry no input features)"}
    report = compare(window.reference, rows, t.drift, columns=columns)
    return {
        "inputs_drifted": report.drifted,
        "input_drifted_features": report.drifted_features[:10],
        "inputs_tested_on": f"{report.rows_current} labeled predictions",
    }


# -- labels -----------------------------------------------------------------------
def _errors(labeled: pa.Table, task: Task) -> np.ndarray[Any, np.dtype[np.float64]]:
    y = np.asarray(labeled.column("label").to_numpy(zero_copy_only=False), dtype=np.float64)
    p = np.asarray(labeled.column("_prediction").to_numpy(zero_copy_only=False), dtype=np.float64)
    errors: np.ndarray[Any, np.dtype[np.float64]] = np.abs(p - y) if task == "regression" else (p != y).astype(float)
    return errors


def _concept(c: _Collector, state: MonitorState) -> dict[str, dict[str, Any]]:
    w, t = c.w, c.t
    detectors = {v: dict(d) for v, d in state.concept.items()}
    if w.labeled is None or w.labeled.num_rows == 0:
        return detectors
    kind: ErrorKind = "gaussian" if w.task == "regression" else "bernoulli"
    versions = w.labeled.column("_model_version").to_pylist()
    errors = _errors(w.labeled, w.task)
    for version in dict.fromkeys(versions):
        mask = np.array([v == version for v in versions])
        saved = detectors.get(str(version))
        det = (
            ErrorCusum.from_dict(saved)
            if saved
            else ErrorCusum(
                kind=kind,
                warmup=t.concept.warmup,
                error_ratio=t.concept.error_ratio,
                shift_sd=t.concept.shift_sd,
                threshold=t.concept.threshold,
                baseline_margin=t.concept.baseline_margin,
            )
        )
        before = det.alarms
        det.update_many(errors[mask])
        detectors[str(version)] = det.to_dict()
        labels = {"model_version": version}
        c.metric("concept.statistic", det.statistic, labels)
        c.metric("concept.error_rate", float(errors[mask].mean()), labels)
        if det.ready:
            c.metric("concept.baseline", det.baseline, labels)
            c.judge(
                SignalKind.CONCEPT_DRIFT,
                det.alarms > before,
                Severity.CRITICAL,
                {
                    "model_version": version,
                    "baseline_error": det.baseline,
                    "window_error": float(errors[mask].mean()),
                    "alarms": det.alarms,
                    "labels": int(mask.sum()),
                    **(c.input_shift() if det.alarms > before else {}),
                },
                key=f"concept_drift:{version}",
            )
    return detectors


def _labeled_check(w: MonitorWindow, t: MonitorThresholds) -> PerformanceCheck | None:
    rows = w.performance_rows
    if rows is None or rows.num_rows == 0:
        return None
    score = rows.column("_score").to_numpy(zero_copy_only=False) if "_score" in rows.column_names else None
    return check_performance(
        rows.column("label").to_numpy(zero_copy_only=False),
        rows.column("_prediction").to_numpy(zero_copy_only=False),
        score,
        w.task,
        w.baseline_metrics,
        t.performance,
        w.baseline_spread,
    )


def _performance(c: _Collector) -> None:
    w = c.w
    check = c.labeled_check()
    if check is None:
        return
    for name, value in check.metrics.items():
        c.metric(f"performance.{name}", value, {"labels": check.n}, w.performance_start)
    worst = check.worst
    if worst is None:
        return
    c.judge(
        SignalKind.PERFORMANCE_DROP,
        check.dropped,
        Severity.CRITICAL,
        {
            "metric": worst.metric,
            "value": worst.value,
            "baseline": worst.baseline,
            "worse_by": worst.worse_by,
            "standard_error": worst.standard_error,
            "labels": check.n,
            **(c.input_shift() if check.dropped else {}),
        },
        start=w.performance_start,
    )
