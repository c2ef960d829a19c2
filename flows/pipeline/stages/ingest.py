"""Ingest: find landing files no run has taken yet (by content digest) and read them.

Pure functions over a landing folder (local path or any fsspec URI); the
pipeline wraps them in Prefect tasks that retry transient read errors.

What counts as a batch file: a regular file (not a directory, symlink, FIFO or
device: those are skipped with a warning and never read through) whose name has
the configured format's suffix and does not start with ``.`` or ``_`` (the
atomic-rename convention: write ``.batch-7.parquet`` or ``_batch-7.parquet``, then
rename it). A batch file is taken only once it is complete (``read_if_complete``):
parquet when its footer is valid, any file once its size and modification time
have not changed for the settle time (a CSV, or a parquet file cut short, which
validation then quarantines), and never while it changes under the reader.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError

logger = logging.getLogger(__name__)

BRONZE = "bronze"
_SUFFIXES = {"parquet": (".parquet", ".pq"), "csv": (".csv",)}
_PARQUET_MAGIC = b"PAR1"
#: Keys fsspec file systems use for a file's modification time (local, s3, gcs/azure).
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated")


class LandingUnreachable(SelfhealError):
    """The landing zone cannot be listed or read."""


@dataclass(frozen=True)
class LandingFile:
    """One batch file, read whole, with its content digest (the idempotency key).

    Attributes:
        refused: why the file must not land although it is new by content (e.g. it
            changed after it was taken); the pipeline quarantines it with this reason.
    """

    source: str
    sha256: str
    raw: bytes
    refused: str = ""

    @property
    def name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


def _fs(path: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def _is_regular(entry: dict[str, Any]) -> bool:
    if entry.get("islink"):
        return False
    mode = entry.get("mode")
    if isinstance(mode, int):
        return stat.S_ISREG(mode)
    return entry.get("type") == "file"


def list_landing(path: str, fmt: str) -> list[str]:
    """Batch files under ``path`` with the configured format's suffix, in name order.

    Entries that are not regular files are skipped with a warning; hidden names
    (``.``/``_`` prefix) are files still being written under the rename convention.

    Raises:
        LandingUnreachable: the folder does not exist or cannot be listed.
    """
    fs, root = _fs(path)
    try:
        if not fs.isdir(root):
            raise LandingUnreachable(f"landing zone {path} does not exist or is not a folder")
        entries = fs.ls(root, detail=True)
    except OSError as exc:
        raise LandingUnreachable(f"landing zone {path} cannot be listed: {exc}") from exc
    suffixes = _SUFFIXES[fmt]
    protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
    names = []
    for entry in entries:
        name = str(entry["name"])
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if not base.endswith(suffixes) or base.startswith((".", "_")):
            continue
        if not _is_regular(entry):
            logger.warning("landing zone: %s is a %s, not a regular file: skipped", base, _kind(entry))
            continue
        names.append(protocol + name if protocol and not name.startswith(protocol) else name)
    return sorted(names)


def _kind(entry: dict[str, Any]) -> str:
    if entry.get("islink"):
        return "symlink"
    kind = str(entry.get("type") or "")
    return kind if kind in ("directory", "file") else "special file (FIFO, socket or device)"


def read_file(source: str) -> LandingFile:
    """Read one landing file whole and digest it."""
    fs, path = _fs(source)
    try:
        with fs.open(path, "rb") as fh:
            raw = bytes(fh.read())
    except OSError as exc:
        raise LandingUnreachable(f"cannot read {source}: {exc}") from exc
    return LandingFile(source, hashlib.sha256(raw).hexdigest(), raw)


def _state(fs: Any, path: str) -> tuple[int, float | None]:
    """(size, modification time as epoch seconds or None when the store has none)."""
    info = fs.info(path)
    for key in _MTIME_KEYS:
        value = info.get(key)
        if isinstance(value, int | float):
            return int(info.get("size") or 0), float(value)
        if isinstance(value, datetime):
            return int(info.get("size") or 0), value.timestamp()
        if isinstance(value, str):
            try:
                return int(info.get("size") or 0), datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return int(info.get("size") or 0), None


def parquet_footer_valid(raw: bytes) -> bool:
    """Whether ``raw`` ends with a parquet footer that parses (a writer writes it last)."""
    if len(raw) < 12 or raw[:4] != _PARQUET_MAGIC or raw[-4:] != _PARQUET_MAGIC:
        return False
    try:
        pq.read_metadata(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError):
        return False
    return True


def read_if_complete(source: str, fmt: str, settle_seconds: float, now: float | None = None) -> LandingFile | None:
    """Read ``source`` if it is complete; None while it may still be being written.

    Complete: its size and modification time did not change while it was read, and
    it is a parquet file with a valid footer or has not been modified for
    ``settle_seconds`` (a store without modification times writes objects whole).

    Raises:
        LandingUnreachable: the file cannot be read.
    """
    fs, path = _fs(source)
    try:
        before = _state(fs, path)
        file = read_file(source)
        after = _state(fs, path)
    except OSError as exc:
        raise LandingUnreachable(f"cannot read {source}: {exc}") from exc
    if before != after or after[0] != len(file.raw):
        return None  # it changed under the reader
    if fmt == "parquet" and parquet_footer_valid(file.raw):
        return file
    modified = after[1]
    if modified is None or (now if now is not None else time.time()) - modified >= settle_seconds:
        return file
    return None


def already_taken(lake: Lake, sha256: str) -> bool:
    """Whether a file with this content already landed in bronze or was quarantined."""
    return lake.has_key(BRONZE, sha256) or lake.is_quarantined(sha256)


def taken_sources(lake: Lake) -> dict[str, set[str]]:
    """Source path -> content digests taken from it (bronze's lineage and the quarantine)."""
    taken: dict[str, set[str]] = {}
    if lake.exists(BRONZE):
        pairs = lake.read(BRONZE, columns=["_source_file", "_sha256"]).group_by(["_source_file", "_sha256"])
        for row in pairs.aggregate([]).to_pylist():
            taken.setdefault(str(row["_source_file"]), set()).add(str(row["_sha256"]))
    for record in lake.quarantined(released=True):
        taken.setdefault(record.source, set()).add(record.sha256)
    return taken


def changed_after_taken(file: LandingFile, taken: dict[str, set[str]]) -> str:
    """Why ``file`` must not land (its path was taken before with other content), or ""."""
    earlier = taken.get(file.source, set()) - {file.sha256}
    if not earlier:
        return ""
    first = sorted(earlier)[0][:12]
    return (
        f"{file.name}: changed after it was taken (taken before with sha256 {first}...): a landing file is "
        "read once; write a new batch under a new name (or write under a hidden name and rename)"
    )


def row_ids(table: pa.Table | Any, id_columns: list[str]) -> list[str]:
    """One string per row identifying it by ``id_columns`` (a frame or an Arrow table)."""
    arrow = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table[id_columns], preserve_index=False)
    parts = [pc.cast(arrow.column(c), pa.string()).to_pylist() for c in id_columns]
    if len(parts) == 1:
        return [str(v) for v in parts[0]]
    return ["\x1f".join(str(v) for v in values) for values in zip(*parts, strict=True)]


def landed_ids(lake: Lake, id_columns: list[str]) -> set[str]:
    """Ids of the rows already in bronze (empty when there is no bronze yet)."""
    if not id_columns or not lake.exists(BRONZE):
        return set()
    return set(row_ids(lake.read(BRONZE, columns=list(id_columns)), list(id_columns)))
