"""Delta Lake checkpoint store: stage tables, exactly-once appends, manifests, quarantine.

It also holds the storage contracts the other packages share (the incident log,
the incident leases, the monitor's metric rows) and the project's exception root.
This package imports nothing else of selfheal's, so the model server and the
chaos extension can use it without Prefect in their process.

The names below load on first use: ``checkpoints.exceptions`` is imported by every
process (the CLI, the model server's clients, the traffic generator), and must not
pull in pyarrow, pandas and deltalake with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from checkpoints.exceptions import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    LakeUnreachable,
    RegistryUnavailable,
    SelfhealError,
    ServingUnavailable,
)

if TYPE_CHECKING:  # types only; at run time __getattr__ imports them on first use
    from checkpoints.lake import AppendResult, Lake
    from checkpoints.maintenance import MaintenanceReport
    from checkpoints.manifests import Manifest
    from checkpoints.quarantine import QuarantineRecord

_LAZY = {
    "AppendResult": "checkpoints.lake",
    "Lake": "checkpoints.lake",
    "MaintenanceReport": "checkpoints.maintenance",
    "Manifest": "checkpoints.manifests",
    "QuarantineRecord": "checkpoints.quarantine",
}

__all__ = [
    "AppendResult",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointNotFound",
    "Lake",
    "LakeUnreachable",
    "MaintenanceReport",
    "Manifest",
    "QuarantineRecord",
    "RegistryUnavailable",
    "SelfhealError",
    "ServingUnavailable",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'checkpoints' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
