"""What the pipeline refuses: a batch (``ValidationFailed``) or a model (``PromotionRejected``).

Both derive from the project root ``checkpoints.exceptions.SelfhealError`` (the whole
tree is drawn there).
"""

from __future__ import annotations

from checkpoints.exceptions import SelfhealError


class ValidationFailed(SelfhealError):
    """A batch broke one or more data expectations."""


class PromotionRejected(SelfhealError):
    """The evaluation gate refused a challenger.

    Attributes:
        metric: the gate's metric name.
        challenger: the challenger's score.
        required: the score it needed (the minimum, or champion minus tolerance).
    """

    def __init__(self, metric: str, challenger: float, required: float, reason: str) -> None:
        self.metric = metric
        self.challenger = challenger
        self.required = required
        super().__init__(f"promotion rejected: {metric}={challenger:.4f}, needed >= {required:.4f} ({reason})")
