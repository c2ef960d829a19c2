"""Open Delta tables kept between reads and brought up to date from the new log entries only.

Opening a ``DeltaTable`` replays its log (the newest checkpoint plus every later JSON
entry). A process that reads the same tables over and over (the healer and monitor,
every tick) paid that replay on every read: 33% of an idle healer's CPU at one tick
per second. ``LatestSnapshots`` keeps one open table per table URI and thread and
calls ``update_incremental()``, which reads only the entries committed since.

What keeps this as safe as a fresh open:

* Only newest-version reads use it; a pinned version is always its own object, so no
  later read moves a snapshot a caller asked for.
* One object per *thread*: a caller checks and commits against the snapshot it was
  given (``Lake.append_once``'s exactly-once rule) without another thread moving it.
* Before reuse, the log entry of the cached version must still be the file that was
  read (size, mtime, inode or etag): an entry set aside by ``Lake.recover`` and
  written again, or a table deleted and re-created, gives a fresh open instead.
* A snapshot whose newest entry is empty (a torn write) is never kept, and an error
  while updating drops the object: the caller's fresh open reports it as before.

Example:
    >>> snapshots = LatestSnapshots()
    >>> dt = snapshots.newest(uri, None, stamp_of_entry)   # replays the log once
    >>> dt = snapshots.newest(uri, None, stamp_of_entry)   # reads only what is new
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

#: What identifies one log entry's file: None when it is missing, ``(0, ...)`` when it is empty.
Stamp = tuple[Hashable, ...] | None
#: Open tables kept per thread (least recently used dropped first).
MAX_TABLES = 64


class LatestSnapshots:
    """Open tables at their newest version, one per table URI and thread."""

    def __init__(self, max_tables: int = MAX_TABLES) -> None:
        self.max_tables = max_tables
        self._local = threading.local()

    def _kept(self) -> OrderedDict[str, tuple[DeltaTable, int, Stamp]]:
        kept = getattr(self._local, "tables", None)
        if kept is None:
            kept = self._local.tables = OrderedDict()
        return kept

    def newest(self, uri: str, storage_options: Mapping[str, str] | None, stamp: Callable[[int], Stamp]) -> DeltaTable:
        """``uri`` at its newest version; ``stamp(version)`` identifies that version's log entry.

        Raises what ``DeltaTable(uri)`` raises (``TableNotFoundError``, ``DeltaError``).
        """
        kept = self._kept()
        cached = kept.pop(uri, None)
        dt = self._updated(cached, stamp)
        if dt is None:
            dt = DeltaTable(uri, storage_options=dict(storage_options) if storage_options else None)
        version = int(dt.version())
        # Unchanged since the last read: ``_updated`` has just checked that very entry.
        unchanged = cached is not None and dt is cached[0] and version == cached[1]
        entry = cached[2] if unchanged and cached is not None else stamp(version)
        if entry is not None and entry[0] != 0:  # never keep a torn (empty) newest entry
            kept[uri] = (dt, version, entry)
            while len(kept) > self.max_tables:
                kept.popitem(last=False)
        return dt

    @staticmethod
    def _updated(cached: tuple[DeltaTable, int, Stamp] | None, stamp: Callable[[int], Stamp]) -> DeltaTable | None:
        """The cached table brought up to date, or None when it cannot be trusted or updated."""
        if cached is None:
            return None
        dt, version, seen = cached  # a write through ``dt`` may have moved it on since: check what we read
        if stamp(version) != seen:
            return None  # the entry we read was replaced: the log is not the one we hold
        try:
            dt.update_incremental()
        except DeltaError:
            return None  # the fresh open says what is wrong, as it always did
        return dt

    def forget(self, uri: str) -> None:
        """Drop this thread's open ``uri`` (after a failed write, or a log entry set aside)."""
        self._kept().pop(uri, None)
