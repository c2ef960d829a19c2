"""Detectors the monitor runs: drift, performance, concept drift, anomalies, window rules.

Pure functions and small value objects; no Prefect, no I/O. The monitor flow
(``flows.monitor.passes``) feeds them and turns their verdicts into ``Signal``s.

Example:
    >>> from flows.monitor.detectors import compare, DriftThresholds
    >>> report = compare(reference, current, DriftThresholds())
    >>> report.drifted, report.features["amount"].effect_size
"""

from flows.monitor.detectors.anomaly import AnomalyScore, SeriesHistory, robust_z
from flows.monitor.detectors.drift import (
    CategoricalSample,
    DriftReport,
    FeatureDrift,
    NumericSample,
    QualityIssue,
    ReferenceProfile,
    compare,
)
from flows.monitor.detectors.performance import MetricCheck, PerformanceCheck, check_performance, task_metrics
from flows.monitor.detectors.rules import (
    ConsecutiveWindows,
    Freshness,
    MissingRows,
    check_freshness,
    check_missing_rows,
)
from flows.monitor.detectors.streaming import ErrorCusum
from flows.monitor.detectors.thresholds import (
    AnomalyThresholds,
    ConceptThresholds,
    DriftThresholds,
    MonitorThresholds,
    PerformanceThresholds,
)

__all__ = [
    "AnomalyScore",
    "AnomalyThresholds",
    "CategoricalSample",
    "ConceptThresholds",
    "ConsecutiveWindows",
    "DriftReport",
    "DriftThresholds",
    "ErrorCusum",
    "FeatureDrift",
    "Freshness",
    "MetricCheck",
    "MissingRows",
    "MonitorThresholds",
    "NumericSample",
    "PerformanceCheck",
    "PerformanceThresholds",
    "QualityIssue",
    "ReferenceProfile",
    "SeriesHistory",
    "check_freshness",
    "check_missing_rows",
    "check_performance",
    "compare",
    "robust_z",
    "task_metrics",
]
