"""The project's exception root, and the errors the storage layer and its users share.

The root lives in ``checkpoints`` because that package imports nothing of ours, so
every other package (``flows``, ``serving``, ``chaos``) can derive from it. Each
subclass lives in the package that raises it; only the root, the store's own errors
and the two outages both ``serving`` and ``flows`` raise stay here::

    SelfhealError                                checkpoints.exceptions
    ├── CheckpointError                          checkpoints.exceptions: anything the Delta store refuses
    │   ├── CheckpointNotFound                   checkpoints.exceptions: no such table, version or manifest
    │   ├── SchemaMismatch                       checkpoints.exceptions: rows that do not fit the table's schema
    │   ├── CheckpointCorrupted                  checkpoints.exceptions: a torn or garbled Delta log entry
    │   └── LakeUnreachable                      checkpoints.exceptions: the lake's object store failed an operation
    ├── RegistryUnavailable                      checkpoints.exceptions: the MLflow tracking store cannot be reached
    ├── ServingUnavailable                       checkpoints.exceptions: the model server does not answer
    ├── ConfigError                              flows.config: selfheal.yaml or SELFHEAL_* is invalid
    ├── LandingUnreachable                       flows.pipeline.stages.ingest: the landing zone cannot be listed
    ├── ValidationFailed                         flows.pipeline.exceptions: a batch broke its data expectations
    ├── PromotionRejected                        flows.pipeline.exceptions: the evaluation gate refused a model
    ├── InputNotFound                            flows.batch.inputs: `score --input` names no table, file or folder
    ├── InputUnreadable                          flows.batch.inputs: an input to score cannot be read
    ├── NoChampion                               flows.batch.champion: no @champion to score a batch with
    ├── UnhealthyChampion                        flows.batch.champion: the @champion's latest golden replay failed
    ├── RemedyFailed                             flows.healer.remedies: a healing remedy could not be applied
    ├── ReleaseError                             flows.release.controller: a release cannot start, move or end
    ├── SLAMissed                                flows.chaos_suite.flow: an experiment missed its SLA
    ├── ModelLoadFailed                          serving.registry: a version could not be loaded
    ├── RollbackImpossible                       serving.reload: no version to roll back to
    ├── UnsupportedSignature                     serving.schema: the model's signature cannot be served
    ├── RequestInvalid                           serving.schema: a request broke the input contract
    ├── _Bad                                     serving.schema: one value broke its column's type (internal)
    ├── PredictTimeout (also TimeoutError)       serving.predictor: a model call took too long
    └── SandboxError (also RuntimeError)         chaos.sandbox: the chaos sandbox could not be brought up

Third-party errors are translated once, at the boundary, with ``raise ... from exc``;
the CLI and the HTTP app turn a ``SelfhealError`` into a message a person can act on.
"""

from __future__ import annotations


class SelfhealError(Exception):
    """Root of every error selfheal raises on purpose.

    Attributes:
        exit_code: what the ``selfheal`` command exits with when this error ends it
            (2 for a configuration mistake, like a usage error).
    """

    exit_code = 1


class CheckpointError(SelfhealError):
    """The Delta checkpoint store refused an operation."""


class CheckpointNotFound(CheckpointError):
    """A table, version or manifest that was asked for does not exist."""


class SchemaMismatch(CheckpointError):
    """Rows do not fit the table's schema (the rows' fault, not the store's)."""


class LakeUnreachable(CheckpointError):
    """The object store under an ``s3://`` (or other remote) lake failed an operation.

    The message names the operation and the path or table (the store's own error follows).
    """


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


class RegistryUnavailable(SelfhealError):
    """The MLflow tracking store could not be reached."""


class ServingUnavailable(SelfhealError):
    """The model server did not answer."""
