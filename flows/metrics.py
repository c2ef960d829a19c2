"""Which way each model-quality metric points: one table for the gate, the monitor and the release analysis.

Example:
    >>> lower_is_better("rmse"), lower_is_better("roc_auc")
    (True, False)
"""

from __future__ import annotations

#: Metrics where lower is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier"})


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one."""
    return metric in LOWER_IS_BETTER
