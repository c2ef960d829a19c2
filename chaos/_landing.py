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

    Attributes:
        landed: files whose rows are in bronze.
        quarantined: files kept whole in quarantine (refused on purpose: not lost).
        missing: files that are in neither place: their rows are lost (so far).
        rows_lost: rows of the missing files (at least 1 per unreadable file).
    """

    landed: tuple[str, ...]
    quarantined: tuple[str, ...]
    missing: tuple[str, ...]
    rows_lost: int

    def summary(self) -> str:
        text = f"{len(self.landed)} landed, {len(self.quarantined)} quarantined, {len(self.missing)} missing"
        if self.missing:
            text += f" ({', '.join(self.missing[:5])}{', ...' if len(self.missing) > 5 else ''})"
        return f"{text}; rows lost: {self.rows_lost}"


def account(landing: str, lake_root: str, bronze: str = "bronze") -> Accounting:
    """Match every landing file (by content digest) with bronze's and the quarantine's idempotency keys."""
    lake = Lake(lake_root)
    landed, quarantined, missing = [], [], []
    lost = 0
    kept = {record.sha256 for record in lake.quarantined()}
    for path in batch_files(landing):
        digest = sha256(path)
        if lake.has_key(bronze, digest):
            landed.append(path.name)
        elif digest in kept:
            quarantined.append(path.name)
        else:
            missing.append(path.name)
            lost += max(1, row_count(path) or 0)
    return Accounting(tuple(landed), tuple(quarantined), tuple(missing), lost)


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
