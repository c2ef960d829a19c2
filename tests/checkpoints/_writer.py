"""A writer process for the concurrency and crash tests (run as ``python -m``)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

from checkpoints import Lake


def main() -> None:
    mode, root, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lake = Lake(root)
    if mode == "concurrent":
        start_at = float(sys.argv[4])
        time.sleep(max(0.0, start_at - time.time()))
        # 50 appends: 40 keys of our own, 10 shared with every other writer (20% repeated).
        # Shared keys interleaved in the same order for every writer, so they collide.
        own = [f"w{writer}-{i}" for i in range(40)]
        keys = [k for j in range(10) for k in (f"shared-{j}", *own[4 * j : 4 * j + 4])]
        rng = np.random.default_rng(writer)
        for key in keys:
            table = pa.table({"key": [key] * 5, "writer": [writer] * 5, "x": rng.random(5)})
            lake.append("events", table, key=key)
    elif mode == "append":
        # One commit of one row to table argv[4], as another process would make it.
        lake.append(sys.argv[4], pa.table({"x": [writer]}))
    elif mode == "big":
        # Appends large tables forever; the test kills us with SIGKILL mid-write.
        rows = 2_000_000
        table = pa.table({f"c{i}": np.random.default_rng(i).random(rows) for i in range(10)})
        i = 0
        while True:
            lake.append("big", table, key=f"big-{writer}-{i}")
            print(f"committed {i}", flush=True)  # noqa: T201
            i += 1


if __name__ == "__main__":
    main()
