"""A writer process for the concurrency and crash tests (run as ``python -m``)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pyarrow as pa

from checkpoints import Lake


def overlapping_keys(writer: int) -> list[str]:
    """Writer ``writer``'s 50 keys (of 3): 20 all three offer, 15 shared with each neighbour.

    Every key is offered by 2 or 3 writers, in one global order, so the writers collide.
    """
    keys = []
    for j in range(20):
        keys.append(f"all-{j}")
        for pair in ((0, 1), (1, 2), (2, 0)):
            if writer in pair and j < 15:
                keys.append(f"pair{pair[0]}{pair[1]}-{j}")
    return keys


def main() -> None:
    mode, root, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lake = Lake(root, json.loads(os.environ.get("SELFHEAL_TEST_STORAGE_OPTIONS", "null")))
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
    elif mode == "overlapping":
        start_at = float(sys.argv[4])
        time.sleep(max(0.0, start_at - time.time()))
        for key in overlapping_keys(writer):
            table = pa.table({"key": [key] * 5, "writer": [writer] * 5, "x": np.arange(5, dtype="float64")})
            result = lake.append_once("events", table, key=key)
            print(json.dumps({"key": key, "duplicate": result.duplicate, "version": result.version}), flush=True)  # noqa: T201
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
