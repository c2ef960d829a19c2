"""Ingest: find landing files no run has taken yet (by content digest) and read them.

Pure functions over a landing folder (local path or any fsspec URI); the
pipeline wraps them in Prefect tasks that retry transient read errors.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import fsspec

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError

logger = logging.getLogger(__name__)

BRONZE = "bronze"
_SUFFIXES = {"parquet": (".parquet", ".pq"), "csv": (".csv",)}


class LandingUnreachable(SelfhealError):
    """The landing zone cannot be listed or read."""


@dataclass(frozen=True)
class LandingFile:
    """One batch file, read whole, with its content digest (the idempotency key)."""

    source: str
    sha256: str
    raw: bytes

    @property
    def name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


def _fs(path: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def list_landing(path: str, fmt: str) -> list[str]:
    """Batch files under ``path`` with the configured format's suffix, in name order.

    Raises:
        LandingUnreachable: the folder does not exist or cannot be listed.
    """
    fs, root = _fs(path)
    try:
        if not fs.isdir(root):
            raise LandingUnreachable(f"landing zone {path} does not exist or is not a folder")
        names = fs.ls(root, detail=False)
    except OSError as exc:
        raise LandingUnreachable(f"landing zone {path} cannot be listed: {exc}") from exc
    suffixes = _SUFFIXES[fmt]
    protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
    return sorted(protocol + n if protocol and not n.startswith(protocol) else n for n in names if n.endswith(suffixes))


def read_file(source: str) -> LandingFile:
    """Read one landing file whole and digest it."""
    fs, path = _fs(source)
    try:
        with fs.open(path, "rb") as fh:
            raw = bytes(fh.read())
    except OSError as exc:
        raise LandingUnreachable(f"cannot read {source}: {exc}") from exc
    return LandingFile(source, hashlib.sha256(raw).hexdigest(), raw)


def already_taken(lake: Lake, sha256: str) -> bool:
    """Whether a file with this content already landed in bronze or was quarantined."""
    return lake.has_key(BRONZE, sha256) or lake.is_quarantined(sha256)
