"""Model-quality metrics: which way each points, and which ones each stage computes for a task.

One table for the gate, the monitor, the release analysis and the config's check of
``gate.metric`` and ``release.quality_metric``.

Example:
    >>> lower_is_better("rmse"), lower_is_better("roc_auc")
    (True, False)
    >>> "f1" in COMPUTED["holdout"]["binary"], "f1" in COMPUTED["feedback"]["binary"]
    (False, True)
"""

from __future__ import annotations

#: Metrics where lower is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier"})

#: The metrics each consumer computes, per task (``tests/flows/test_metrics.py`` pins this
#: table to what the code returns):
#:   holdout: the pipeline's holdout scores (``flows.pipeline.stages.train.score``), which
#:       the evaluate stage's gate reads: what ``gate.metric`` may name;
#:   feedback: the metrics on labeled feedback (``flows.monitor.detectors.performance.task_metrics``,
#:       plus ``brier`` of the positive-class score), which the release analysis's quality
#:       metric reads: what ``release.quality_metric`` (by default ``gate.metric``) may name.
COMPUTED: dict[str, dict[str, tuple[str, ...]]] = {
    "holdout": {
        "binary": ("roc_auc", "average_precision", "accuracy", "f1_macro"),
        "multiclass": ("roc_auc", "accuracy", "f1_macro"),
        "regression": ("r2", "rmse", "mae"),
    },
    "feedback": {
        "binary": ("roc_auc", "accuracy", "f1", "brier"),
        "multiclass": ("accuracy", "f1_macro"),
        "regression": ("r2", "rmse", "mae"),
    },
}

#: The gate metric when ``gate.metric`` is not set.
DEFAULT_GATE_METRIC = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "r2"}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one."""
    return metric in LOWER_IS_BETTER
