"""Run manifests: which version of every stage table one pipeline run produced.

The last *complete* manifest is the last consistent checkpoint: rolling back
restores every stage table it names to its version there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from checkpoints.lake import Lake

MANIFESTS_TABLE = "_manifests"

_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("complete", pa.bool_()),
        ("stages", pa.string()),
        ("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class Manifest:
    """The table versions one pipeline run left behind.

    Example:
        >>> m = lake.write_manifest("run-42", {"bronze": 3, "silver": 2})
        >>> lake.rollback_to(lake.last_manifest())
    """

    run_id: str
    stages: dict[str, int]
    complete: bool = True
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "complete": self.complete,
            "stages": json.dumps(self.stages, sort_keys=True),
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Manifest:
        return cls(
            run_id=row["run_id"],
            stages={k: int(v) for k, v in json.loads(row["stages"]).items()},
            complete=bool(row["complete"]),
            created_at=row["created_at"],
            meta=json.loads(row["meta"] or "{}"),
        )


def write_manifest(lake: Lake, manifest: Manifest) -> Manifest:
    """Record ``manifest``; writing the same run id and completeness twice records it once."""
    table = pa.Table.from_pylist([manifest.to_row()], schema=_SCHEMA)
    lake.append(MANIFESTS_TABLE, table, key=f"manifest:{manifest.run_id}:{manifest.complete}")
    return manifest


def list_manifests(lake: Lake) -> list[Manifest]:
    """Every recorded manifest, oldest first."""
    if not lake.exists(MANIFESTS_TABLE):
        return []
    rows = lake.read(MANIFESTS_TABLE).sort_by("created_at").to_pylist()
    return [Manifest.from_row(r) for r in rows]


def last_complete(lake: Lake) -> Manifest | None:
    """The last consistent checkpoint, or None before the first complete run."""
    complete = [m for m in list_manifests(lake) if m.complete]
    return complete[-1] if complete else None


def rollback_to(lake: Lake, manifest: Manifest) -> dict[str, int]:
    """Restore every table the manifest names to its version; return the new versions."""
    return {table: lake.restore(table, version) for table, version in sorted(manifest.stages.items())}
