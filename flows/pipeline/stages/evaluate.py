"""Evaluate: the promotion gate.

A challenger is promoted only when its metric reaches the configured minimum
AND it is not worse than the current champion on the *same* holdout, within a
tolerance. For error metrics (rmse, mae) lower is better, and the minimum is
read as a maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from flows.metrics import lower_is_better
from flows.pipeline.exceptions import PromotionRejected


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with both numbers.

    Example:
        >>> decision = check("roc_auc", 0.91, champion=0.93, minimum=0.8, tolerance=0.01)
        >>> decision.passed, decision.required
        (False, 0.92)
    """

    metric: str
    challenger: float
    champion: float | None
    required: float
    passed: bool
    reason: str

    def raise_if_rejected(self) -> GateDecision:
        """Raise ``PromotionRejected`` with both numbers unless the gate passed."""
        if not self.passed:
            raise PromotionRejected(self.metric, self.challenger, self.required, self.reason)
        return self


def check(metric: str, challenger: float, champion: float | None, minimum: float, tolerance: float) -> GateDecision:
    """Apply the gate.

    Args:
        metric: the gate metric's name.
        challenger: the challenger's score on the holdout.
        champion: the champion's score on the same holdout (None: no champion yet).
        minimum: the score every model must reach (a maximum for lower-is-better metrics; 0 = none).
        tolerance: how much worse than the champion a challenger may be.
    """
    lower = lower_is_better(metric)
    if lower and minimum > 0 and challenger > minimum:
        return GateDecision(metric, challenger, champion, minimum, False, "above the configured maximum")
    if not lower and challenger < minimum:
        return GateDecision(metric, challenger, champion, minimum, False, "below the configured minimum")
    if champion is None:
        return GateDecision(metric, challenger, None, minimum, True, "no champion yet")
    required = champion + tolerance if lower else max(minimum, champion - tolerance)
    worse = challenger > required if lower else challenger < required
    reason = f"champion scores {champion:.4f} on the same holdout"
    return GateDecision(metric, challenger, champion, required, not worse, reason)


def gate(metric: str, challenger: float, champion: float | None, minimum: float, tolerance: float) -> GateDecision:
    """``check`` that raises ``PromotionRejected`` (with both numbers) when the gate refuses."""
    return check(metric, challenger, champion, minimum, tolerance).raise_if_rejected()
