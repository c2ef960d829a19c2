"""The landing zone as files: batch names, atomic writes, and what the lake made of each file."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from checkpoints import Lake
from checkpoints.incidents import IncidentLog, State
from checkpoints.quarantine import imputed_key

BATCH_NAME = re.compile(r"^batch-(\d+)\.(parquet|csv)$")
#: A batch name, or the hidden name a rollback set a removed batch aside under.
_ANY_BATCH_NAME = re.compile(r"^\.?batch-(\d+)\.(parquet|csv)(\.removed)?$")
REMOVED_SUFFIX = ".removed"
SUFFIXES = (".parquet", ".pq", ".csv")


def batch_files(landing: str | os.PathLike[str]) -> list[Path]:
    """Batch files in the landing folder, in name order, as the pipeline sees them.

    Regular files only (a directory, symlink or FIFO is not a batch), and not the hidden
    names (``.``/``_`` prefix) a writer uses before renaming a finished file.
    """
    folder = Path(landing)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.startswith((".", "_")) and p.suffix in SUFFIXES
    )


def next_index(landing: str | os.PathLike[str]) -> int:
    """One past the highest ``batch-NNNNN`` index in the folder (0 when there is none).

    Every entry named like a batch counts, whatever it is, and so do batches a rollback
    set aside (``set_aside``): a name is never used twice, since the pipeline reads a
    landing file once and refuses a path it took before that comes back with new content.
    """
    folder = Path(landing)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    indexes = [int(m.group(1)) for name in names if (m := _ANY_BATCH_NAME.match(name))]
    return max(indexes) + 1 if indexes else 0


def set_aside(path: Path) -> Path:
    """Take an entry out of the landing zone by renaming it hidden (``.<name>.removed``); returns the new path."""
    hidden = path.with_name(f".{path.name}{REMOVED_SUFFIX}")
    if hidden.is_symlink() or hidden.exists():
        hidden = path.with_name(f".{path.name}.{time.time_ns()}{REMOVED_SUFFIX}")
    path.rename(hidden)
    return hidden


def write_atomic(path: Path, raw: bytes) -> None:
    """Write via a hidden temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def row_count(path: Path) -> int | None:
    """Rows in a parquet or CSV file; None when it cannot be read."""

    try:
        if path.suffix == ".csv":
            return int(pacsv.read_csv(str(path)).num_rows)

        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    except (pa.ArrowException, OSError, ValueError):  # a corrupt (or vanished) file has no row count
        return None


@dataclass(frozen=True)
class Accounting:
    """What became of the landing files.

    A quarantined file is not lost only when a repair re-landed it (imputed, or a clean
    copy backfilled from the fallback source) or an ESCALATED incident names it (a person
    must act: its rows are awaiting that person, which the table says, not "0 lost").

    Attributes:
        landed: files whose rows are in bronze.
        repaired: quarantined files a repair re-landed.
        escalated: quarantined files an escalated incident names.
        quarantined: quarantined files with neither: counted as lost.
        missing: files in neither bronze nor quarantine: lost (so far).
        rows_lost: rows of the ``quarantined`` and ``missing`` files (at least 1 per unreadable file).
        rows_escalated: rows of the readable ``escalated`` files.
        unreadable_escalated: ``escalated`` files that cannot be read (their rows are unknown).
    """

    landed: tuple[str, ...]
    quarantined: tuple[str, ...]
    missing: tuple[str, ...]
    rows_lost: int
    repaired: tuple[str, ...] = ()
    escalated: tuple[str, ...] = ()
    rows_escalated: int = 0
    unreadable_escalated: int = 0

    def summary(self) -> str:
        text = (
            f"{len(self.landed)} landed, {len(self.repaired)} repaired, {len(self.escalated)} escalated, "
            f"{len(self.quarantined)} quarantined unrepaired, {len(self.missing)} missing"
        )
        lost = [*self.quarantined, *self.missing]
        if lost:
            text += f" ({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''})"
        text += f"; rows lost: {self.rows_lost}"
        if self.escalated:
            text += f"; escalated, {awaiting(self.rows_escalated, self.unreadable_escalated)}"
        return text

    def counts(self) -> dict[str, int]:
        """The suite's row figures: ``rows_lost``, ``rows_awaiting`` and ``unreadable_awaiting``."""
        return {
            "rows_lost": self.rows_lost,
            "rows_awaiting": self.rows_escalated,
            "unreadable_awaiting": self.unreadable_escalated,
        }


def awaiting(rows: int, unreadable: int) -> str:
    """What escalated batches leave a person: "1000 rows", "1 unreadable file" or both, "awaiting a person"."""
    parts = [f"{rows} rows"] if rows or not unreadable else []
    if unreadable:
        parts.append(f"{unreadable} unreadable file{'s' if unreadable > 1 else ''}")
    return f"{' and '.join(parts)} awaiting a person"


def _escalated_sources(lake: Lake) -> set[str]:
    """Landing files named by an ESCALATED incident's quarantine evidence (their full paths and names)."""
    named: set[str] = set()
    for incident in IncidentLog(lake).incidents():
        if incident.state is State.ESCALATED:
            for entry in incident.evidence.get("quarantined") or []:
                source = str(entry.get("source", ""))
                named |= {source, Path(source).name}
    return named


def account(landing: str, lake_root: str, bronze: str = "bronze") -> Accounting:
    """Match every landing file (by content digest) with bronze's and the quarantine's idempotency keys."""
    lake = Lake(lake_root)
    landed, repaired, escalated, quarantined, missing = [], [], [], [], []
    lost = rows_escalated = unreadable = 0
    kept = {record.sha256: record for record in lake.quarantined()}
    files = batch_files(landing)
    backfilled = {p.name.removeprefix("backfill-") for p in files if p.name.startswith("backfill-")}
    named = _escalated_sources(lake) if kept else set()
    for path in files:
        digest = sha256(path)
        record = kept.get(digest)
        if lake.has_key(bronze, digest):
            landed.append(path.name)
        elif record is None:
            missing.append(path.name)
            lost += max(1, row_count(path) or 0)
        elif path.name in backfilled or lake.has_key(bronze, imputed_key(record.stored_at)):
            repaired.append(path.name)
        elif path.name in named or str(path) in named:
            escalated.append(path.name)
            rows = row_count(path)
            rows_escalated += rows or 0
            unreadable += rows is None
        else:
            quarantined.append(path.name)
            lost += max(1, row_count(path) or 0)
    return Accounting(
        tuple(landed),
        tuple(quarantined),
        tuple(missing),
        lost,
        tuple(repaired),
        tuple(escalated),
        rows_escalated,
        unreadable,
    )


def unfinished(landing: str, lake_root: str, bronze: str = "bronze") -> str | None:
    """Why the pipeline has work left (None when it has none).

    Either a landing file is in neither bronze nor quarantine, or bronze moved past the
    last complete run manifest: a run wrote it and never finished (killed mid-stage).
    """
    found = account(landing, lake_root, bronze)
    if found.missing:
        return f"{len(found.missing)} new landing file(s)"
    lake = Lake(lake_root)
    if not lake.exists(bronze):
        return None
    manifest = lake.last_manifest()
    done = manifest.stages.get(bronze) if manifest is not None else None
    if done != lake.version(bronze):
        return f"bronze is at version {lake.version(bronze)}, the last complete run left it at {done}"
    return None
