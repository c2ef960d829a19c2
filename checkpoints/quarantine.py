"""Quarantine: bad batches kept whole, with the reason they were refused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from checkpoints.rows import from_row, to_table

if TYPE_CHECKING:
    from checkpoints.lake import Lake

QUARANTINE_TABLE = "_quarantine"
_FILES = "_quarantine_files"


@dataclass(frozen=True)
class QuarantineRecord:
    """One refused batch.

    Attributes:
        sha256: digest of the raw file (also its idempotency key).
        source: where the batch came from.
        reason: one line a person can act on.
        failures: every failed expectation (e.g. pandera's failure cases).
        stored_at: where the raw bytes are kept, unchanged.
    """

    sha256: str
    source: str
    reason: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    quarantined_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stored_at: str = ""
    size_bytes: int = 0


def quarantine(
    lake: Lake,
    raw: bytes,
    source: str,
    reason: str,
    failures: list[dict[str, Any]] | None = None,
) -> QuarantineRecord:
    """Keep ``raw`` and record why it was refused (once per content digest)."""
    digest = hashlib.sha256(raw).hexdigest()
    name = source.replace("\\", "/").rsplit("/", 1)[-1] or "batch"
    stored_at = lake.storage.join(_FILES, digest, name)
    if not lake.storage.exists(stored_at):
        lake.storage.write_bytes(stored_at, raw)
    record = QuarantineRecord(digest, source, reason, list(failures or []), stored_at=stored_at, size_bytes=len(raw))
    lake.append(QUARANTINE_TABLE, to_table([record]), key=_key(digest))
    return record


def _key(sha256: str) -> str:
    return f"quarantine:{sha256}"


def imputed_key(stored_at: str) -> str:
    """The bronze idempotency key of a quarantined batch re-landed by imputation (one per quarantined file).

    ``stored_at`` is ``<lake>/_quarantine_files/<sha256>/<name>``: the key names the digest.
    """
    return f"imputed:{PurePosixPath(stored_at).parent.name}"


def is_quarantined(lake: Lake, sha256: str) -> bool:
    """Whether a batch with this content digest was quarantined."""
    return lake.has_key(QUARANTINE_TABLE, _key(sha256))


def list_quarantined(lake: Lake) -> list[QuarantineRecord]:
    """Every quarantined batch, oldest first."""
    if not lake.exists(QUARANTINE_TABLE):
        return []
    rows = lake.read(QUARANTINE_TABLE).sort_by("quarantined_at").to_pylist()
    return [from_row(QuarantineRecord, r) for r in rows]
