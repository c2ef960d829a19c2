"""Lake.append / Lake.read against plain pyarrow.parquet on the same table.

1,000,000 rows x 10 float64 columns, 5 runs of each, interleaved, medians and
ratios printed. Target (issue 2): append / write_table <= 1.3. Reads are
reported too. Run: ``.venv/bin/python benchmarks/checkpoint_write.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package: put the repository root there instead.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from checkpoints import Lake


def _timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(args.rows) for i in range(10)})
    timings: dict[str, list[float]] = {"lake.append": [], "pq.write_table": [], "lake.read": [], "pq.read_table": []}
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(Path(tmp) / "lake")
        lake.append("warmup", table.slice(0, 1000), key="warmup")
        for run in range(args.runs):
            path, name = Path(tmp) / f"plain-{run}.parquet", f"bench{run}"
            timings["lake.append"].append(_timed(lake.append, name, table, key=f"run-{run}"))
            timings["pq.write_table"].append(_timed(pq.write_table, table, path))
            timings["lake.read"].append(_timed(lake.read, name))
            timings["pq.read_table"].append(_timed(pq.read_table, path))
            assert lake.read(name).num_rows == args.rows
    med = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{args.rows:,} rows x 10 float64 columns, {args.runs} interleaved runs, medians:")
    for name, value in med.items():
        print(f"  {name:<16} {value * 1000:8.1f} ms")
    write_ratio = med["lake.append"] / med["pq.write_table"]
    read_ratio = med["lake.read"] / med["pq.read_table"]
    verdict = "met" if write_ratio <= 1.3 else "MISSED"
    print(f"  write ratio lake.append / pq.write_table = {write_ratio:.2f} (target <= 1.3: {verdict})")
    print(f"  read ratio  lake.read / pq.read_table    = {read_ratio:.2f}")


if __name__ == "__main__":
    main()
