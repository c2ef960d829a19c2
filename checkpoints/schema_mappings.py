"""Schema mappings: column renames a repair applied, recorded so that later batches reuse them.

An upstream that renames a column keeps sending it under the new name. The healer's
``schema_evolution`` remedy maps such a column to the known one it matches (with its
evidence) and records the mapping here; the pipeline's landing stage applies every
recorded mapping to a batch before validating it, so the next batch with the same
rename lands without a new incident. The mapping only renames a column back to a name
the model already knows: the feature schema never changes here (it evolves only with a
retrain on data that carries the new name under its own).

The table is append-only, one row per mapping (key ``schema-mapping:<from>-><to>``): a
mapping is recorded once, whoever records it again (a healer resuming after a crash).

Example:
    >>> record_mapping(lake, SchemaMapping("amount_v2", "amount", evidence={"ks": 0.03}, incident_id="inc-1"))
    >>> renames(lake)
    {'amount_v2': 'amount'}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from checkpoints.rows import from_row, to_table

if TYPE_CHECKING:
    from checkpoints.lake import Lake

SCHEMA_MAPPINGS_TABLE = "_schema_mappings"


@dataclass(frozen=True)
class SchemaMapping:
    """One recorded rename: batches' column ``source`` is the known column ``target``.

    Attributes:
        source: the column's name in the batches that arrive now.
        target: the known column (in the locked feature schema) it is.
        evidence: what backed the mapping (name similarity, value overlap, KS distance...).
        incident_id: the incident whose repair recorded it.
        approved_by: ``auto`` (evidence above the thresholds) or the person who approved it.
        sha256: the quarantined batch it was first found in.
    """

    source: str
    target: str
    evidence: dict[str, Any] = field(default_factory=dict)
    incident_id: str = ""
    approved_by: str = "auto"
    sha256: str = ""
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _key(mapping: SchemaMapping) -> str:
    return f"schema-mapping:{mapping.source}->{mapping.target}"


def record_mapping(lake: Lake, mapping: SchemaMapping) -> bool:
    """Record ``mapping`` once; False when it was recorded before (nothing written).

    Raises:
        ValueError: ``source`` already maps to another column, or the mapping is a no-op.
    """
    if mapping.source == mapping.target:
        raise ValueError(f"a mapping of {mapping.source!r} to itself renames nothing")
    current = renames(lake).get(mapping.source)
    if current is not None and current != mapping.target:
        raise ValueError(f"{mapping.source!r} already maps to {current!r}, not {mapping.target!r}")
    return not lake.append_once(SCHEMA_MAPPINGS_TABLE, to_table([mapping]), key=_key(mapping)).duplicate


def list_mappings(lake: Lake) -> list[SchemaMapping]:
    """Every recorded mapping, oldest first."""
    if not lake.exists(SCHEMA_MAPPINGS_TABLE):
        return []
    mappings = [from_row(SchemaMapping, row) for row in lake.read(SCHEMA_MAPPINGS_TABLE).to_pylist()]
    return sorted(mappings, key=lambda m: (m.recorded_at, m.source))


def renames(lake: Lake) -> dict[str, str]:
    """Batch column -> known column, for every recorded mapping (empty when none was recorded)."""
    return {m.source: m.target for m in list_mappings(lake)}
