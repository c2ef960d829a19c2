"""The project's exception hierarchy.

It lives in ``checkpoints`` because that package imports nothing of ours, so
every other package (``flows``, ``serving``, ``chaos``) can import it::

    SelfhealError
    ├── ConfigError                 selfheal.yaml or SELFHEAL_* is invalid
    ├── CheckpointError             anything the Delta store refuses
    │   ├── CheckpointNotFound      no such table, version or manifest
    │   └── CheckpointCorrupted     a torn or garbled Delta log entry
    ├── ValidationFailed            a batch broke its data expectations
    ├── PromotionRejected           the evaluation gate refused a model
    ├── RegistryUnavailable         the MLflow tracking store cannot be reached
    ├── ServingUnavailable          the model server does not answer
    ├── RemedyFailed                a healing remedy could not be applied
    └── ReleaseError                a release cannot start, move or end in its current state

Third-party errors are translated once, at the boundary, with ``raise ... from exc``.
"""

from __future__ import annotations


class SelfhealError(Exception):
    """Root of every error selfheal raises on purpose."""


class ConfigError(SelfhealError):
    """The configuration is invalid; the message names the key path."""


class CheckpointError(SelfhealError):
    """The Delta checkpoint store refused an operation."""


class CheckpointNotFound(CheckpointError):
    """A table, version or manifest that was asked for does not exist."""


class CheckpointCorrupted(CheckpointError):
    """A table's newest log entry is torn or garbled.

    Attributes:
        table: the table's name in the lake.
        version: the log version that cannot be read.
    """

    def __init__(self, table: str, version: int, detail: str) -> None:
        self.table = table
        self.version = version
        super().__init__(
            f"table {table!r}: Delta log entry {version} is corrupted ({detail}). "
            f"The last good version is {version - 1}; run "
            f"`selfheal lake recover {table}` (or Lake.recover({table!r})) to set the "
            "damaged entry aside and read the table at that version."
        )


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


class RegistryUnavailable(SelfhealError):
    """The MLflow tracking store could not be reached."""


class ServingUnavailable(SelfhealError):
    """The model server did not answer."""


class RemedyFailed(SelfhealError):
    """A healing remedy could not be applied."""


class ReleaseError(SelfhealError):
    """A shadow/canary release cannot be started, promoted or aborted as asked (the message says why)."""
