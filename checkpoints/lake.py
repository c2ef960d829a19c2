"""The lake: one Delta table per stage output under one root, with exactly-once appends.

Exactly-once: every keyed append records the key as a Delta ``txn`` (app id).
delta-rs records ``txn`` actions but never skips a duplicate, so ``append``
checks ``transaction_version(key)`` on a snapshot and commits *against that
same snapshot* with delta-rs's commit retries turned off: if any writer committed
in between, the commit fails (put-if-absent on the next log entry) and we re-check
on a fresh snapshot. delta-rs's own retry would re-commit at the next version
without looking at the winner's ``txn`` (measured: 3 writers racing on one key
wrote it twice), and so would a first append racing another writer to create the
table, which is why creation uses ``mode="error"``. The check and the commit
therefore cannot interleave with a concurrent writer.

Put-if-absent is the store's: a rename that refuses to replace on a local disk, a
conditional PUT (``If-None-Match: *``, storage option ``aws_conditional_put``) on
S3-compatible stores, which must enforce it (SeaweedFS does: tests/checkpoints/test_lake_s3.py).
No lock and no shared filesystem are involved.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError

from checkpoints._storage import Storage
from checkpoints.exceptions import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    LakeUnreachable,
    SchemaMismatch,
)
from checkpoints.maintenance import MaintenanceReport, maintain
from checkpoints.manifests import Manifest, last_complete, list_manifests, rollback_to, write_manifest
from checkpoints.quarantine import QuarantineRecord, is_quarantined, list_quarantined, quarantine
from checkpoints.scan import added_rows, last_commit, snapshot_rows, window
from checkpoints.snapshots import LatestSnapshots

logger = logging.getLogger(__name__)

#: Custom commit metadata key carrying the idempotency key of an append.
KEY_METADATA = "selfheal.key"
#: Custom commit metadata key listing the keys a restore re-stated.
RESTATED_METADATA = "selfheal.restated_keys"
_COMMIT_ATTEMPTS = 50
#: Newest-version reads of every ``Lake`` in this process share the open tables (see ``checkpoints.snapshots``).
_SNAPSHOTS = LatestSnapshots()


@dataclass(frozen=True)
class AppendResult:
    """What one ``Lake.append_once`` did.

    Attributes:
        version: the table version holding the rows (new, or the earlier one for a duplicate).
        duplicate: True when the key had already been committed and nothing was written.
        rows: rows written by this call (0 for a duplicate).
    """

    version: int
    duplicate: bool
    rows: int


P = ParamSpec("P")
R = TypeVar("R")


def _remote_io(method: Callable[Concatenate[Lake, P], R]) -> Callable[Concatenate[Lake, P], R]:
    """On an object-store lake, delta-rs's I/O errors become ``LakeUnreachable`` naming the operation.

    delta-rs raises a bare ``OSError`` ("Generic S3 error: ... GET .../_last_checkpoint")
    when the store does not answer; the message then says which ``Lake`` call and table.
    A local lake's errors are left as they were.
    """

    @functools.wraps(method)
    def wrapper(self: Lake, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if self.storage.local or isinstance(exc, FileNotFoundError):
                raise
            what = f"{method.__name__}({args[0]!r})" if args and isinstance(args[0], str) else method.__name__
            raise LakeUnreachable(f"lake {self.root}: {what} failed on the object store: {exc}") from exc

    return wrapper


def _to_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    module = type(data).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"expected a pyarrow.Table or pandas.DataFrame, got {type(data).__name__}")


def _writer_properties(schema: pa.Schema) -> WriterProperties:
    """delta-rs's writer settings for ``schema``: no dictionary encoding of floating-point columns.

    Continuous values hardly repeat, so the writer would hash every value only to fall
    back to plain encoding once the dictionary page fills: a third of the write time for
    no smaller file (``benchmarks/checkpoint_write.py``; pyarrow pays the same). Other
    columns keep it (categories, codes and flags do repeat), and compression stays
    delta-rs's default, snappy (a ``WriterProperties`` without one would write uncompressed).
    """
    plain = ColumnProperties(dictionary_enabled=False)
    floats = {f.name: plain for f in schema if pa.types.is_floating(f.type)}
    return WriterProperties(compression="SNAPPY", column_properties=floats or None)


def _app_id(key: str) -> str:
    return f"selfheal:{key}"


def _is_live(txn_version: int | None) -> bool:
    """A key's rows are in the table when its ``txn`` version is odd.

    A restore can remove rows whose key stays recorded in the log (``txn``
    actions cannot be deleted). So the version counts incarnations: odd = the
    rows are in the table, even = a restore took them out and the key may be
    written again. Versions only grow, as the Delta protocol requires.
    """
    return txn_version is not None and txn_version % 2 == 1


def _next_version(current: int | None, live: bool) -> int:
    nxt = (current or 0) + 1
    return nxt if _is_live(nxt) == live else nxt + 1


class Lake:
    """Delta tables under one root (a local folder or any object-store URI).

    Example:
        >>> lake = Lake("/tmp/lake")
        >>> v = lake.append("bronze", table, key=sha256_of_source_file)
        >>> lake.read("bronze", version=v).num_rows
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None) -> None:
        self.storage = Storage(os.fspath(root), storage_options)
        self.root = self.storage.root
        self.storage_options: dict[str, str] | None = dict(storage_options) if storage_options else None

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    # -- tables -----------------------------------------------------------
    def uri(self, table: str) -> str:
        """The URI of ``table`` under the root."""
        if not table or "/" in table or table.startswith("."):
            raise ValueError(f"invalid table name {table!r}")
        return self.storage.join(table)

    @_remote_io
    def exists(self, table: str) -> bool:
        """Whether ``table`` has at least one committed version."""
        return self.storage.exists(self.storage.join(table, "_delta_log"))

    @_remote_io
    def has_rows(self, table: str) -> bool:
        """Whether ``table`` exists and its newest version holds a data file (read from the log: no data is read)."""
        return self.exists(table) and bool(self._open(table).file_uris())

    @_remote_io
    def tables(self) -> list[str]:
        """Names of the tables under the root, sorted."""
        return sorted(name for name in self.storage.listdir(self.root) if self.exists(name))

    def _open(self, table: str, version: int | str | datetime | None = None) -> DeltaTable:
        uri = self.uri(table)
        try:
            if version is None:
                dt = self._newest(table)
                self._check_not_empty(table, int(dt.version()))
            elif isinstance(version, int):
                dt = DeltaTable(uri, version=version, storage_options=self.storage_options)
            else:
                dt = DeltaTable(uri, storage_options=self.storage_options)
                dt.load_as_version(version)
            return dt
        except TableNotFoundError as exc:
            raise CheckpointNotFound(f"table {table!r} does not exist under {self.root}") from exc
        except DeltaError as exc:
            self._raise_if_corrupted(table, exc)
            if version is not None:
                raise CheckpointNotFound(f"table {table!r} has no version {version!r}: {exc}") from exc
            raise CheckpointError(f"table {table!r}: {exc}") from exc

    def _newest(self, table: str) -> DeltaTable:
        """``table`` at its newest version: this thread's open table, updated with the new log entries only.

        Every caller gets the same object until the next newest read of ``table`` in this
        thread moves it: use it, do not keep it. A pinned version is never this object.
        """
        return _SNAPSHOTS.newest(self.uri(table), self.storage_options, lambda v: self._entry_stamp(table, v))

    def _entry_stamp(self, table: str, version: int) -> tuple[int, str] | None:
        return self.storage.stamp(self.storage.join(table, "_delta_log", f"{version:020d}.json"))

    def _forget(self, table: str) -> None:
        """Drop the open ``table`` (its state after a failed write or a set-aside entry is not trusted)."""
        _SNAPSHOTS.forget(self.uri(table))

    def _check_not_empty(self, table: str, version: int) -> None:
        # delta-rs reads a zero-byte newest entry as an empty commit; a real commit
        # always carries at least commitInfo, so an empty one is a torn write.
        stamp = self._entry_stamp(table, version)  # one stat (one HEAD on an object store)
        if stamp is not None and stamp[0] == 0:
            raise CheckpointCorrupted(table, version, "empty log entry")

    def _log_versions(self, table: str) -> list[int]:
        log = self.storage.join(table, "_delta_log")
        versions = []
        for name in self.storage.listdir(log):
            stem, _, ext = name.partition(".")
            if ext == "json" and stem.isdigit():
                versions.append(int(stem))
        return sorted(versions)

    def _raise_if_corrupted(self, table: str, exc: Exception) -> None:
        """Translate a log that cannot be parsed into ``CheckpointCorrupted``."""
        for version in reversed(self._log_versions(table)):
            entry = self.storage.join(table, "_delta_log", f"{version:020d}.json")
            text = self.storage.read_bytes(entry).decode("utf-8", errors="replace")
            try:
                lines = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise CheckpointCorrupted(table, version, f"unparseable JSON: {err}") from exc
            if not lines:
                raise CheckpointCorrupted(table, version, "empty log entry") from exc
            return  # only the newest entry can be torn by a crashed writer

    @_remote_io
    def version(self, table: str) -> int:
        """The newest committed version of ``table``."""
        return int(self._open(table).version())

    @_remote_io
    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit history of ``table``, newest first."""
        return list(self._open(table).history(limit))

    @_remote_io
    def read(
        self,
        table: str,
        version: int | None = None,
        *,
        as_of: datetime | None = None,
        columns: list[str] | None = None,
        ordered: bool = False,
    ) -> pa.Table:
        """Read ``table`` at its newest version, at ``version``, or as of a time.

        ``ordered``: a version's rows always in the same order (its files in the order they were
        added), so a row's position names it (see ``checkpoints.scan.snapshot_rows``).
        """
        if version is not None and as_of is not None:
            raise ValueError("give version or as_of, not both")
        dt = self._open(table, version if version is not None else as_of)
        return snapshot_rows(self, dt, table, columns=columns, ordered=ordered)

    @_remote_io
    def read_added(self, table: str, seen: frozenset[str]) -> tuple[int, frozenset[str], pa.Table, bool]:
        """``(version, files, rows, reset)`` of the newest snapshot: see ``checkpoints.scan.added_rows``."""
        dt = self._open(table)
        files, rows, reset = added_rows(self, dt, table, seen)
        return int(dt.version()), files, rows, reset

    @_remote_io
    def scan(
        self,
        table: str,
        where: pc.Expression | None = None,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        after: tuple[str, datetime] | None = None,
    ) -> pa.Table | None:
        """Rows of ``table`` (at ``version``, default newest) matching ``where``; None if no such table.

        For tables other processes append to: no emptiness check of the newest log entry
        (that is ``read``'s); a delta-rs error becomes ``CheckpointError``. ``after`` skips
        files by their statistics (see ``checkpoints.scan.snapshot_rows``).
        """
        if not self.exists(table):
            return None
        try:
            if version is None:
                dt = self._newest(table)
            else:
                dt = DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)
        except DeltaError as exc:
            raise CheckpointError(f"table {table!r}: cannot read: {exc}") from exc
        return snapshot_rows(self, dt, table, where, columns, after)

    @_remote_io
    def window(
        self, table: str, column: str, start: datetime | None, end: datetime, columns: list[str] | None = None
    ) -> pa.Table | None:
        """Rows with ``start < column <= end``, opening only files that may hold them (None: no such table)."""
        return window(self, table, column, start, end, columns)

    @_remote_io
    def last_commit(self, table: str) -> datetime | None:
        """When ``table`` was last written (None if never)."""
        return last_commit(self, table)

    @_remote_io
    def has_key(self, table: str, key: str) -> bool:
        """Whether an append with idempotency ``key`` was committed to ``table``."""
        if not self.exists(table):
            return False
        return _is_live(self._open(table).transaction_version(_app_id(key)))

    def append(
        self, table: str, data: Any, key: str | None = None, *, schema_mode: Literal["merge"] | None = None
    ) -> int:
        """Append rows, exactly once per ``key``, and return the table version holding them.

        Args:
            table: table name under the root (created on first append).
            data: a ``pyarrow.Table`` or ``pandas.DataFrame``.
            key: idempotency key (e.g. the source file's sha256). A key already
                committed writes nothing and returns the version that holds it.
            schema_mode: ``"merge"`` to add new columns; default refuses a schema change.
        """
        return self.append_once(table, data, key, schema_mode=schema_mode).version

    @_remote_io
    def append_once(
        self, table: str, data: Any, key: str | None = None, *, schema_mode: Literal["merge"] | None = None
    ) -> AppendResult:
        """Like ``append`` but says whether the key was a duplicate."""
        arrow = _to_arrow(data)
        uri = self.uri(table)
        for attempt in range(_COMMIT_ATTEMPTS):
            dt = self._open(table) if self.exists(table) else None
            txn_version = dt.transaction_version(_app_id(key)) if key is not None and dt is not None else None
            if key is not None and dt is not None and _is_live(txn_version):
                return AppendResult(self._version_of_key(dt, key), duplicate=True, rows=0)
            props = CommitProperties(
                app_transactions=[Transaction(app_id=_app_id(key), version=_next_version(txn_version, True))]
                if key
                else None,
                custom_metadata={KEY_METADATA: key} if key else None,
                # delta-rs would otherwise re-commit a lost race at the next version
                # without looking at the winner's ``txn``: fail instead and re-check.
                max_commit_retries=0 if key else None,
            )
            try:
                # No snapshot yet: create the table with mode="error" so that a writer
                # racing us to create it fails here instead of appending its key to a
                # table it never checked (version 0 is written put-if-absent).
                write_deltalake(
                    dt if dt is not None else uri,
                    arrow,
                    mode="append" if dt is not None else "error",
                    schema_mode=schema_mode,
                    storage_options=None if dt is not None else self.storage_options,
                    commit_properties=props,
                    writer_properties=_writer_properties(arrow.schema),
                )
            except CommitFailedError as exc:
                # A concurrent writer won: re-check the key on a fresh snapshot.
                self._forget(table)
                logger.debug("append to %s lost a commit race (attempt %d): %s", table, attempt, exc)
                time.sleep(random.uniform(0.0, min(0.2, 0.01 * (attempt + 1))))  # jitter: writers desynchronize
                continue
            except SchemaMismatchError as exc:
                self._forget(table)
                raise SchemaMismatch(f"table {table!r}: schema does not match: {exc}") from exc
            except DeltaError as exc:
                self._forget(table)
                if "already exists" in str(exc).lower():
                    continue  # another writer created the table first
                raise CheckpointError(f"table {table!r}: append failed: {exc}") from exc
            except Exception as exc:
                # delta-rs casts appended columns to the table's types and raises a bare
                # Exception ("Cast error: Cannot cast string 'yes' to value of Int64 type")
                # when a value does not fit: that is a schema mismatch, not a crash.
                if not str(exc).startswith("Cast error"):
                    raise
                self._forget(table)
                raise SchemaMismatch(f"table {table!r}: schema does not match: {exc}") from exc
            return AppendResult(self._committed_version(table, key), duplicate=False, rows=arrow.num_rows)
        raise CheckpointError(f"table {table!r}: gave up after {_COMMIT_ATTEMPTS} commit conflicts")

    def _committed_version(self, table: str, key: str | None) -> int:
        dt = self._open(table)
        return self._version_of_key(dt, key) if key else int(dt.version())

    def _version_of_key(self, dt: DeltaTable, key: str) -> int:
        # Our own commit is almost always among the newest few: look there first, so an
        # append does not cost a scan of the whole history as the table grows.
        for limit in (16, None):
            for commit in dt.history(limit):
                if commit.get(KEY_METADATA) == key:
                    return int(commit["version"])
        return int(dt.version())  # key committed before custom metadata existed

    def _keys_after(self, dt: DeltaTable, version: int) -> set[str]:
        """Keys whose ``txn`` changed in commits newer than ``version``."""
        keys: set[str] = set()
        for commit in dt.history():
            if int(commit["version"]) <= version:
                continue
            if KEY_METADATA in commit:
                keys.add(str(commit[KEY_METADATA]))
            if RESTATED_METADATA in commit:
                keys.update(json.loads(commit[RESTATED_METADATA]))
        return keys

    @_remote_io
    def overwrite(self, table: str, data: Any) -> int:
        """Replace the content of ``table`` (a new version; old ones stay readable)."""
        arrow = _to_arrow(data)
        target: DeltaTable | str = self._open(table) if self.exists(table) else self.uri(table)
        try:
            write_deltalake(
                target,
                arrow,
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=None if isinstance(target, DeltaTable) else self.storage_options,
                writer_properties=_writer_properties(arrow.schema),
            )
        except DeltaError as exc:
            self._forget(table)
            raise CheckpointError(f"table {table!r}: overwrite failed: {exc}") from exc
        return self.version(table)

    @_remote_io
    def restore(self, table: str, version: int, *, key: str | None = None) -> int:
        """Make ``version`` the newest state of ``table`` and return the resulting version.

        Restoring to the current version is a no-op, and so is a restore whose
        idempotency ``key`` was already committed (a repair retried after a crash).
        """
        dt = self._open(table)
        if int(dt.version()) == version or (key is not None and _is_live(dt.transaction_version(_app_id(key)))):
            return int(dt.version())
        try:
            target = DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)
            restated = self._keys_after(dt, version)
            txns = []
            if key is not None:
                txns.append(Transaction(_app_id(key), _next_version(dt.transaction_version(_app_id(key)), True)))
            txns += [
                Transaction(
                    app_id=_app_id(key),
                    version=_next_version(
                        dt.transaction_version(_app_id(key)), _is_live(target.transaction_version(_app_id(key)))
                    ),
                )
                for key in sorted(restated)
            ]
            dt.restore(
                version,
                commit_properties=CommitProperties(
                    app_transactions=txns or None,
                    custom_metadata={RESTATED_METADATA: json.dumps(sorted(restated))} if restated else None,
                ),
            )
        except DeltaError as exc:
            self._forget(table)
            raise CheckpointNotFound(f"table {table!r}: cannot restore to version {version}: {exc}") from exc
        return int(DeltaTable(self.uri(table), storage_options=self.storage_options).version())

    @_remote_io
    def recover(self, table: str) -> int:
        """Set aside a corrupted newest log entry and return the version now readable.

        The damaged entry is moved to ``_delta_log/_corrupted/`` (never deleted) so
        it can be inspected. Raises ``CheckpointNotFound`` if the table is healthy.
        """
        try:
            self._open(table)
        except CheckpointCorrupted as exc:
            log = self.storage.join(table, "_delta_log")
            name = f"{exc.version:020d}.json"
            self.storage.move(self.storage.join(log, name), self.storage.join(log, "_corrupted", name))
            self._forget(table)
            logger.warning("table %s: set aside corrupted log entry %d", table, exc.version)
            return self.version(table)
        raise CheckpointNotFound(f"table {table!r} is not corrupted; nothing to recover")

    def iter_versions(self, table: str) -> Iterator[int]:
        """Versions of ``table`` still in its log, oldest first."""
        yield from self._log_versions(table)

    # -- manifests, quarantine, maintenance ---------------------------------
    @_remote_io
    def write_manifest(
        self, run_id: str, stages: Mapping[str, int], *, complete: bool = True, meta: Mapping[str, Any] | None = None
    ) -> Manifest:
        """Record which version of each stage table run ``run_id`` produced."""
        return write_manifest(self, Manifest(run_id, dict(stages), complete, meta=dict(meta or {})))

    @_remote_io
    def manifests(self) -> list[Manifest]:
        """Every manifest, oldest first."""
        return list_manifests(self)

    @_remote_io
    def last_manifest(self) -> Manifest | None:
        """The last complete manifest: the last consistent checkpoint."""
        return last_complete(self)

    @_remote_io
    def rollback_to(self, manifest: Manifest) -> dict[str, int]:
        """Restore every table named by ``manifest`` to its version there."""
        return rollback_to(self, manifest)

    @_remote_io
    def quarantine(
        self, raw: bytes, source: str, reason: str, failures: list[dict[str, Any]] | None = None
    ) -> QuarantineRecord:
        """Keep a refused batch's raw bytes and record the reason."""
        return quarantine(self, raw, source, reason, failures)

    @_remote_io
    def is_quarantined(self, sha256: str) -> bool:
        """Whether a batch with this content digest was quarantined."""
        return is_quarantined(self, sha256)

    @_remote_io
    def quarantined(self, *, released: bool = False) -> list[QuarantineRecord]:
        """Every quarantined batch, oldest first (``released``: with those a release landed)."""
        return list_quarantined(self, released=released)

    @_remote_io
    def maintain(self, table: str, keep_manifests: int | None = None) -> MaintenanceReport:
        """Checkpoint and vacuum ``table`` without breaking any kept manifest."""
        return maintain(self, table, keep_manifests)
