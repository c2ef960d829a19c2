"""Reading rows by predicate or time window, opening only the files that may hold them.

On a local lake a snapshot's files are read with pyarrow's own filesystem: reading
through delta-rs's filesystem bridge intermittently aborts the interpreter at exit
("terminate called without an active exception", delta-rs#2184, arrow#34314), which
would fail a CI run whose tests all passed. Object-store lakes go through delta-rs.

Example:
    >>> rows = lake.window("inference_log", "_ts", start, end)   # start < _ts <= end
    >>> lake.last_commit("silver")
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from checkpoints.exceptions import CheckpointError

if TYPE_CHECKING:
    from checkpoints.lake import Lake


def utc(value: datetime) -> pa.Scalar:
    """``value`` as an Arrow UTC timestamp scalar (to compare with a timestamp column)."""
    return pa.scalar(value, type=pa.timestamp("us", tz="UTC"))


def snapshot_rows(
    lake: Lake,
    dt: DeltaTable,
    table: str,
    where: pc.Expression | None = None,
    columns: list[str] | None = None,
    after: tuple[str, datetime] | None = None,
    ordered: bool = False,
) -> pa.Table:
    """The rows of the snapshot ``dt`` of ``table`` matching ``where``.

    ``after=(column, t)`` (``where`` must imply ``column > t``): files whose Delta
    statistics say every value of ``column`` is at most ``t`` are skipped unopened. The
    server appends a small file per flush, so without it each monitor pass would open
    every file the log ever had.

    ``ordered``: the files are read in the order they were added (``_in_added_order``), so a
    version's rows always come in the same order (the log's own order can change once a
    checkpoint is written), and a row's position in it can name the row.
    """
    try:
        if not lake.storage.local:
            if ordered:
                return _in_added_order_rows(dt, columns, where)
            return dt.to_pyarrow_table(columns=columns, filters=where)
        schema = pa.schema(dt.schema().to_arrow())
        files = [uri.removeprefix("file://") for uri in dt.file_uris()]
        if ordered:
            files = _in_added_order(dt, files)
        if after is not None:
            files = _newer_files(dt, files, lake.uri(table), *after)
    except DeltaError as exc:
        raise CheckpointError(f"table {table!r}: cannot read: {exc}") from exc
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns, filter=where)


def _in_added_order(dt: DeltaTable, files: list[str]) -> list[str]:
    """``files`` (paths or URIs of the snapshot ``dt``'s data files) by when each was added, then by name.

    Both come from the file's ``add`` action, so the order is the same for a version whichever
    way the log is read; data file names are unique (delta-rs puts a UUID in each).
    """
    actions = pa.table(dt.get_add_actions(flatten=True)).select(["path", "modification_time"]).to_pylist()
    added = {a["path"].rsplit("/", 1)[-1]: (int(a["modification_time"]), a["path"]) for a in actions}
    return sorted(files, key=lambda file: added.get(file.rsplit("/", 1)[-1], (2**63, file)))


def _in_added_order_rows(dt: DeltaTable, columns: list[str] | None, where: pc.Expression | None) -> pa.Table:
    """An object-store snapshot's rows, its files in ``_in_added_order`` (read through delta-rs)."""
    dataset = dt.to_pyarrow_dataset()
    order = {path: n for n, path in enumerate(_in_added_order(dt, [f.path for f in dataset.get_fragments()]))}
    fragments = sorted(dataset.get_fragments(), key=lambda fragment: order[fragment.path])
    if not fragments:
        empty = dataset.schema.empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables(
        [fragment.to_table(schema=dataset.schema, columns=columns, filter=where) for fragment in fragments]
    )


def added_rows(lake: Lake, dt: DeltaTable, table: str, seen: frozenset[str]) -> tuple[frozenset[str], pa.Table, bool]:
    """Rows of the files of snapshot ``dt`` that are not in ``seen`` (file URIs an earlier call returned).

    Returns ``(files, rows, reset)``: the snapshot's files, the rows read, and whether
    they are the whole table (a file of ``seen`` is gone: the table was rewritten, so the
    caller's rows are stale; an object-store lake is read whole every time). An
    append-only log read this way costs the new files, not its whole history.
    """
    try:
        files = dt.file_uris()
    except DeltaError as exc:
        raise CheckpointError(f"table {table!r}: cannot read: {exc}") from exc
    current = frozenset(files)
    if not lake.storage.local or not seen <= current:
        return current, snapshot_rows(lake, dt, table), True
    new = [uri.removeprefix("file://") for uri in files if uri not in seen]
    schema = pa.schema(dt.schema().to_arrow())
    rows = ds.dataset(new, schema=schema, format="parquet").to_table() if new else schema.empty_table()
    return current, rows, False


class Tail:
    """An append-only table read as it grows: each new version costs the files it added, not the history.

    Example:
        >>> tail = Tail(lake, "incidents")
        >>> rows, reset = tail.added() or (None, False)   # None: no new version since the last call
    """

    def __init__(self, lake: Lake, table: str) -> None:
        self.lake = lake
        self.table = table
        self.version: int | None = None
        self.files: frozenset[str] = frozenset()

    def added(self) -> tuple[pa.Table, bool] | None:
        """``(rows, reset)`` when ``table`` (which must exist) has a new version, else None.

        ``rows`` are those of the files new since the last call; with ``reset`` they are the
        whole table (it was rewritten, or lives on an object store: see ``added_rows``) and
        what the caller kept from earlier calls is stale.
        """
        version = self.lake.version(self.table)
        if version == self.version:
            return None
        self.version, self.files, rows, reset = self.lake.read_added(self.table, self.files)
        return rows, reset


def _newer_files(dt: DeltaTable, files: list[str], root: str, column: str, bound: datetime) -> list[str]:
    """``files`` that may hold a ``column`` value above ``bound`` (by their Delta max statistic)."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if f"max.{column}" not in actions.column_names:
        return files  # no statistics: every file may
    maxima = actions.column(f"max.{column}").cast(pa.timestamp("us", tz="UTC"))
    old = pc.and_kleene(pc.is_valid(maxima), pc.less_equal(maxima, utc(bound)))
    skip = {f"{root.rstrip('/')}/{path}" for path in actions.filter(old).column("path").to_pylist()}
    return [f for f in files if f not in skip] if skip else files


def window(
    lake: Lake,
    table: str,
    column: str,
    start: datetime | None,
    end: datetime,
    columns: list[str] | None = None,
) -> pa.Table | None:
    """Rows with ``start < column <= end`` (no lower bound when ``start`` is None); None if no such table.

    Files whose statistics put every ``column`` value at or before ``start`` are not opened.
    """
    where = pc.field(column) <= utc(end)
    if start is not None:
        where = (pc.field(column) > utc(start)) & where
    return lake.scan(table, where, columns=columns, after=(column, start) if start is not None else None)


def last_commit(lake: Lake, table: str) -> datetime | None:
    """When ``table`` was last written (None if never)."""
    if not lake.exists(table):
        return None
    history = lake.history(table, limit=1)
    return datetime.fromtimestamp(int(history[0]["timestamp"]) / 1000, UTC) if history else None


def read_labeled(
    lake: Lake, start: datetime | None, end: datetime, *, feedback: str, predictions: str
) -> pa.Table | None:
    """Labels in ``(start, end]`` joined with the predictions they label, oldest label first.

    ``feedback`` has ``request_id, label, ts``; ``predictions`` (the inference log) has
    ``_request_id, _prediction, _score, _model_version`` and the feature columns, which
    come along (a quality drop is only concept drift when those inputs did not shift).
    """
    labels = window(lake, feedback, "ts", start, end)
    if labels is None or labels.num_rows == 0:
        return None
    preds = lake.scan(predictions, pc.field("_request_id").isin(pc.unique(labels.column("request_id"))))
    if preds is None or preds.num_rows == 0:
        return None
    keep = [c for c in ("_request_id", "_prediction", "_score", "_model_version") if c in preds.column_names]
    keep += [c for c in preds.column_names if not c.startswith("_") and c not in ("request_id", "label", "ts")]
    joined = labels.select(["request_id", "label", "ts"]).join(
        preds.select(keep), keys="request_id", right_keys="_request_id", join_type="inner"
    )
    return joined.sort_by("ts")
