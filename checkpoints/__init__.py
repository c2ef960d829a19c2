"""Delta Lake checkpoint store: stage tables, exactly-once appends, manifests, quarantine.

It also holds the storage contracts the other packages share (the incident log,
the incident leases, the monitor's metric rows) and the project's exception root.
This package imports nothing else of selfheal's, so the model server and the
chaos extension can use it without Prefect in their process.
"""

from checkpoints.exceptions import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    RegistryUnavailable,
    SelfhealError,
    ServingUnavailable,
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
    "Lake",
    "MaintenanceReport",
    "Manifest",
    "QuarantineRecord",
    "RegistryUnavailable",
    "SelfhealError",
    "ServingUnavailable",
]
