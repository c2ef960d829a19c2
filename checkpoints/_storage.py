"""Plain file operations under the lake root, for local paths and object-store URIs.

The lake's storage options are delta-rs's (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...,
case-insensitive, ``aws_`` prefix optional): for an ``s3://`` root the same options
configure s3fs here, so one ``lake.storage_options`` mapping serves both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

from checkpoints.exceptions import CheckpointError, LakeUnreachable

#: delta-rs S3 option (lower case, without ``aws_``) -> s3fs keyword or ``client_kwargs`` entry.
_S3FS_KEYS = {"access_key_id": "key", "secret_access_key": "secret", "session_token": "token"}
_S3FS_CLIENT = {
    "endpoint_url": "endpoint_url",
    "endpoint": "endpoint_url",
    "region": "region_name",
    "default_region": "region_name",
}


def s3fs_options(storage_options: Mapping[str, str] | None) -> dict[str, Any]:
    """s3fs keywords for delta-rs ``storage_options`` (options only delta-rs uses are left out).

    Listings are never cached: another process may add a table or log entry at any time.
    """
    kwargs: dict[str, Any] = {"use_listings_cache": False}
    client: dict[str, Any] = {}
    for raw, value in (storage_options or {}).items():
        name = raw.lower().removeprefix("aws_")
        if name in _S3FS_KEYS:
            kwargs[_S3FS_KEYS[name]] = value
        elif name in _S3FS_CLIENT:
            client[_S3FS_CLIENT[name]] = value
    # fsspec keeps one filesystem per set of keywords: an endpoint botocore would read from the
    # environment is named here, so a process whose AWS_ENDPOINT_URL changes (the chaos suite's
    # second production sandbox) does not reuse a filesystem on the first one's endpoint.
    if "endpoint_url" not in client and os.environ.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if client:
        kwargs["client_kwargs"] = client
    return kwargs


def _filesystem(root: str, local: bool, storage_options: Mapping[str, str] | None) -> Any:
    if local:
        return fsspec.filesystem("file")
    scheme = root.split("://")[0]
    if scheme in ("s3", "s3a"):
        try:
            return fsspec.filesystem("s3", **s3fs_options(storage_options))
        except ImportError as exc:
            raise CheckpointError(f"lake root {root}: listing an s3:// lake needs s3fs (pip install s3fs)") from exc
    try:
        return fsspec.filesystem(scheme, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"lake root {root}: no filesystem for {scheme}:// ({exc})") from exc


class Storage:
    """Files under a root: a local folder (``/path``, ``file://``) or an fsspec URI (``s3://``)."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.local = "://" not in root or root.startswith("file://")
        if self.local:
            root = os.path.abspath(root.removeprefix("file://"))
        self.root = root.rstrip("/") or "/"
        self.fs: Any = _filesystem(self.root, self.local, storage_options)

    @contextlib.contextmanager
    def _io(self, operation: str, path: str) -> Iterator[None]:
        """On an object store, any failure but a missing file is ``LakeUnreachable`` naming ``operation``.

        (s3fs raises botocore's errors, which are not ``OSError``: callers would see a bare
        ``EndpointConnectionError`` without the path or what the lake was doing.)
        """
        if self.local:
            yield
            return
        try:
            yield
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise LakeUnreachable(f"lake {self.root}: {operation} {path} failed on the object store: {exc}") from exc

    def join(self, *parts: str) -> str:
        if parts and (parts[0] == self.root or parts[0].startswith(self.root + "/")):
            return "/".join(parts)
        return "/".join((self.root, *parts))

    def exists(self, path: str) -> bool:
        with self._io("checking", path):
            return bool(self.fs.exists(path))

    def listdir(self, path: str) -> list[str]:
        with self._io("listing", path):
            if not self.fs.exists(path):
                return []
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def size(self, path: str) -> int:
        with self._io("sizing", path):
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
            with self._io("stat of", path):
                info = self.fs.info(path)
        except FileNotFoundError:
            return None
        marker = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        return int(info.get("size") or 0), str(marker)

    def read_bytes(self, path: str) -> bytes:
        with self._io("reading", path), self.fs.open(path, "rb") as fh:
            return bytes(fh.read())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` so that a reader never sees a partial file (rename on local disks, one PUT on a store)."""
        if self.local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            with self._io("writing", path), self.fs.open(path, "wb") as fh:
                fh.write(data)

    def move(self, src: str, dst: str) -> None:
        with self._io(f"moving to {dst}", src):
            self.fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(src, dst)
