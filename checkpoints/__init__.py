"""Delta Lake checkpoint store: stage tables, exactly-once appends, manifests, quarantine.

This package imports nothing else of selfheal's, so the model server and the
chaos extension can use it without Prefect in their process.
"""

from checkpoints.exceptions import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    ConfigError,
    PromotionRejected,
    RegistryUnavailable,
    RemedyFailed,
    SelfhealError,
    ServingUnavailable,
    ValidationFailed,
)
from checkpoints.lake import AppendResult, Lake
from checkpoints.maintenance import MaintenanceReport
from checkpoints.manifests import Manifest
from checkpoints.quarantine import QuarantineRecord

__all__ = [
    "AppendResult",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "Lake",
    "MaintenanceReport",
    "Manifest",
    "PromotionRejected",
    "QuarantineRecord",
    "RegistryUnavailable",
    "RemedyFailed",
    "SelfhealError",
    "ServingUnavailable",
    "ValidationFailed",
]
