"""Plain file operations under the lake root, for local paths and object-store URIs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fsspec


class Storage:
    """Files under a root: a local folder (``/path``, ``file://``) or an fsspec URI (``s3://``)."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.local = "://" not in root or root.startswith("file://")
        if self.local:
            root = os.path.abspath(root.removeprefix("file://"))
        self.root = root.rstrip("/") or "/"
        self.fs: Any = fsspec.filesystem("file" if self.local else root.split("://")[0], **(storage_options or {}))

    def join(self, *parts: str) -> str:
        if parts and (parts[0] == self.root or parts[0].startswith(self.root + "/")):
            return "/".join(parts)
        return "/".join((self.root, *parts))

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def listdir(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def stamp(self, path: str) -> tuple[int, str] | None:
        """What identifies the file at ``path`` now: ``(size, change marker)``, None when it is missing.

        The marker is the inode and mtime on a local disk, the etag (or mtime) on an
        object store: a file removed and written again at the same path gets a new one.
        """
        if self.local:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            return st.st_size, f"{st.st_ino}:{st.st_mtime_ns}"
        self.fs.invalidate_cache(path)  # fsspec may answer from a listing made before the change
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        marker = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        return int(info.get("size") or 0), str(marker)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as fh:
            return bytes(fh.read())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` so that a reader never sees a partial file (rename on local disks)."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "wb") as fh:
                fh.write(data)

    def move(self, src: str, dst: str) -> None:
        self.fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(src, dst)
