"""What a batch scoring reads: a table of the lake at one version, or batch files, one input version each.

An input version is what is scored exactly once: a table at a version (``silver@12``), or
a file's content (its sha256: the same bytes under another name are the same input,
scored once). A row is named by its position in its input version: a file's row order,
or a table version's rows with its files in the order they were added (``Lake.read(..., ordered=True)``).

``--input`` names a table of the project's lake (``NAME`` at its newest version, or
``NAME@VERSION``), else a parquet or CSV file, or a folder of them (its batch files, as the
pipeline lists a landing zone: hidden names and files still being written are left for a
later run).

Example:
    >>> sources = resolve(lake, "silver@12")           # or "landing/", "batch-3.csv"
    >>> batch = read(lake, sources[0], settle_seconds=10)
    >>> batch.key, batch.rows.num_rows
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fsspec
import pyarrow as pa

from checkpoints import Lake
from checkpoints.exceptions import CheckpointNotFound, SelfhealError
from flows.pipeline.stages import ingest
from flows.pipeline.stages.batch_io import FORMATS, read_table

logger = logging.getLogger(__name__)


class InputNotFound(SelfhealError):
    """``--input`` names no table of the lake and no file or folder."""


class InputUnreadable(SelfhealError):
    """An input cannot be read: not a parquet/CSV file, cut short, garbled, or the store failed."""


@dataclass(frozen=True)
class Source:
    """One thing to score, as named: a lake table (at a version) or one file.

    Attributes:
        kind: ``table`` or ``file``.
        name: the table's name, or the file's path.
        version: a table's version (None: the newest when it is read).
        settle: a file found in a folder (it may still be being written; see ``read``).
    """

    kind: Literal["table", "file"]
    name: str
    version: int | None = None
    settle: bool = False

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.kind == "table" and self.version is not None else self.name


@dataclass(frozen=True)
class Batch:
    """One input version, read.

    Attributes:
        source: what was named.
        version: the table's version, or the file's sha256.
        rows: its rows, in the order that names them.
    """

    source: Source
    version: str
    rows: pa.Table

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def key(self) -> str:
        """The input version's identity: ``table:<name>@<version>``, or ``file:<sha256>`` (content, not name)."""
        return f"table:{self.name}@{self.version}" if self.source.kind == "table" else f"file:{self.version}"

    def __str__(self) -> str:
        if self.source.kind == "table":
            return f"{self.name}@{self.version}"
        return f"{self.name} (sha256 {self.version[:12]})"


def resolve(lake: Lake, spec: str) -> list[Source]:
    """The sources ``spec`` names: a table of ``lake`` (``NAME`` or ``NAME@VERSION``), a file, or a folder's files.

    A name that could be both a table and a path is the table. A folder without batch files gives none.

    Raises:
        InputNotFound: no such table, file or folder (the message names what was looked for).
        ValueError: an empty ``spec`` or a version that is not a number.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("--input is empty: give a table of the lake or a parquet/CSV file or folder")
    table = _table(lake, spec)
    if table is not None:
        return [table]
    fs, path = fsspec.core.url_to_fs(spec)
    try:
        if fs.isdir(path):
            return _folder(spec)
        if fs.isfile(path):
            _format(spec)
            return [Source("file", spec)]
    except OSError as exc:
        raise InputNotFound(f"cannot look at {spec}: {exc}") from exc
    where = spec if "://" in spec else os.path.abspath(spec)
    name = spec.partition("@")[0]
    if "/" in name or Path(name).suffix:  # a path: no table is named like that
        raise InputNotFound(f"--input {spec!r}: no file or folder {where}")
    raise InputNotFound(f"--input {spec!r}: no table {name!r} in the lake {lake.root}, and no file or folder {where}")


def _table(lake: Lake, spec: str) -> Source | None:
    name, at, version = spec.partition("@")
    if "/" in name or name.startswith(".") or not name:
        return None
    if not lake.exists(name):
        return None
    if not at:
        return Source("table", name)
    if not version.isdigit():
        raise ValueError(f"--input {spec!r}: the version after @ must be a number, e.g. {name}@3")
    return Source("table", name, int(version))


def _folder(spec: str) -> list[Source]:
    files = sorted({path for fmt in FORMATS for path in ingest.list_landing(spec, fmt)})
    return [Source("file", path, settle=True) for path in files]


def _format(path: str) -> str:
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise InputUnreadable(f"{path}: not a batch file (expected a .parquet, .pq or .csv name)")


def read(lake: Lake, source: Source, settle_seconds: float = 0.0) -> Batch | None:
    """Read one source whole; None for a folder's file still being written (a later run takes it).

    Raises:
        InputUnreadable: the file cannot be read or parsed, or the table version cannot be read.
    """
    if source.kind == "table":
        try:
            version = source.version if source.version is not None else lake.version(source.name)
            rows = lake.read(source.name, version, ordered=True)
        except CheckpointNotFound as exc:
            raise InputUnreadable(f"table {source}: {exc}") from exc
        return Batch(source, str(version), rows)
    fmt = _format(source.name)
    try:
        if source.settle:
            file = ingest.read_if_complete(source.name, fmt, settle_seconds)
            if file is None:
                return None
        else:
            file = ingest.read_file(source.name)
    except ingest.LandingUnreachable as exc:
        raise InputUnreadable(str(exc)) from exc
    try:
        rows = read_table(file.raw, source.name, fmt)
    except SelfhealError as exc:  # ValidationFailed: the bytes are no readable batch
        raise InputUnreadable(str(exc)) from exc
    return Batch(source, file.sha256, rows)
