"""Quarantine: bad batches kept whole, with the reason they were refused.

The table is append-only, one row per event of a batch (keyed by its digest): it was
quarantined; a re-check with another config refused it for another reason; a release
landed it. The newest row of a digest is the batch's state; ``quarantined_at`` stays the
time it was first refused (the healer opens incidents for newly quarantined batches, and
a re-check is not one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from checkpoints.exceptions import CheckpointNotFound
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
    attempt: int = 0
    """0 for the first refusal; each later event of the batch counts one up."""
    checked_at: datetime | None = None
    """When a re-check (``selfheal lake quarantine release``) last refused it for a new reason."""
    released_at: datetime | None = None
    """When a release landed it: it is no longer quarantined."""

    @property
    def id(self) -> str:
        """The short id people type (the digest's first 12 hex digits)."""
        return self.sha256[:12]


def quarantine(
    lake: Lake,
    raw: bytes,
    source: str,
    reason: str,
    failures: list[dict[str, Any]] | None = None,
) -> QuarantineRecord:
    """Keep ``raw`` and record why it was refused (once per content digest).

    A batch already quarantined that is refused again for another reason (a re-check
    under a changed config) gets that reason as its newest record; the same reason
    again records nothing.
    """
    digest = hashlib.sha256(raw).hexdigest()
    # A new digest (the usual case) needs no read of the whole quarantine, just its key.
    current = _newest(lake).get(digest) if lake.has_key(QUARANTINE_TABLE, _key(digest)) else None
    if current is not None and current.released_at is None:
        if current.reason == reason:
            return current
        record = replace(
            current, reason=reason, failures=list(failures or []), attempt=current.attempt + 1, checked_at=_now()
        )
        lake.append(QUARANTINE_TABLE, to_table([record]), key=f"{_key(digest)}:{record.attempt}", schema_mode="merge")
        return record
    name = source.replace("\\", "/").rsplit("/", 1)[-1] or "batch"
    stored_at = lake.storage.join(_FILES, digest, name)
    if not lake.storage.exists(stored_at):
        lake.storage.write_bytes(stored_at, raw)
    record = QuarantineRecord(digest, source, reason, list(failures or []), stored_at=stored_at, size_bytes=len(raw))
    lake.append(QUARANTINE_TABLE, to_table([record]), key=_key(digest), schema_mode="merge")
    return record


def mark_released(lake: Lake, record: QuarantineRecord) -> QuarantineRecord:
    """Record that ``record``'s batch landed: it leaves the quarantine (once per digest)."""
    released = replace(record, attempt=record.attempt + 1, released_at=_now())
    lake.append(QUARANTINE_TABLE, to_table([released]), key=f"{_key(record.sha256)}:released", schema_mode="merge")
    return released


def find(lake: Lake, id_prefix: str) -> QuarantineRecord:
    """The batch whose digest starts with ``id_prefix`` (released ones included).

    Raises:
        CheckpointNotFound: no batch, or more than one, has such a digest.
    """
    prefix = id_prefix.strip().lower()
    matches = [r for digest, r in _newest(lake).items() if prefix and digest.startswith(prefix)]
    if len(matches) != 1:
        what = "no quarantined batch" if not matches else f"{len(matches)} quarantined batches"
        raise CheckpointNotFound(
            f"{what} with id {id_prefix!r}; `selfheal lake quarantine list` shows each batch's id"
            + (" (give more digits)" if matches else "")
        )
    return matches[0]


def _now() -> datetime:
    return datetime.now(UTC)


def _key(sha256: str) -> str:
    return f"quarantine:{sha256}"


def imputed_key(stored_at: str) -> str:
    """The bronze idempotency key of a quarantined batch re-landed by imputation (one per quarantined file).

    ``stored_at`` is ``<lake>/_quarantine_files/<sha256>/<name>``: the key names the digest.
    """
    return f"imputed:{PurePosixPath(stored_at).parent.name}"


def is_quarantined(lake: Lake, sha256: str) -> bool:
    """Whether a batch with this content digest was quarantined (a released one too: it then is in bronze)."""
    return lake.has_key(QUARANTINE_TABLE, _key(sha256))


def _newest(lake: Lake) -> dict[str, QuarantineRecord]:
    """Digest -> the batch's newest record."""
    if not lake.exists(QUARANTINE_TABLE):
        return {}
    newest: dict[str, QuarantineRecord] = {}
    for row in lake.read(QUARANTINE_TABLE).to_pylist():
        record = from_row(QuarantineRecord, row)
        seen = newest.get(record.sha256)
        # A release ends a batch's story even if a re-check raced it to the same attempt number.
        if seen is None or (record.attempt, record.released_at is not None) > (
            seen.attempt,
            seen.released_at is not None,
        ):
            newest[record.sha256] = record
    return newest


def list_quarantined(lake: Lake, *, released: bool = False) -> list[QuarantineRecord]:
    """Every quarantined batch (its newest record), oldest first; ``released`` adds those a release landed."""
    records = [r for r in _newest(lake).values() if released or r.released_at is None]
    return sorted(records, key=lambda r: (r.quarantined_at, r.sha256))
