"""CPU per healer tick with the lake's open tables kept (``checkpoints.snapshots``) and without.

Builds a lake like a served model's after a while of traffic: silver, and an inference
log and feedback table of many small commits (the server flushes about once a second).
Then runs healer ticks (``HealerLoop.tick``: the probes, a monitor pass, the incident
log) in one process, as ``selfheal heal --interval 1`` does, with one new commit of
traffic before each tick. "old" opens every table afresh on every read (the log
replayed each time, as before); "new" keeps them open and reads only new log entries.
Ticks alternate old/new on the same log (and the machine's load); CPU is this process's
(``time.process_time``), so other processes on the machine count less than in wall time.

Run: ``.venv/bin/python benchmarks/healer_tick.py [--commits 650] [--ticks 40]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package: put the repository root there instead.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

import checkpoints.lake as lake_module
from checkpoints import Lake
from checkpoints.snapshots import LatestSnapshots

TS = pa.timestamp("us", tz="UTC")


def _traffic(rng: np.random.Generator, n: int, start: datetime, commit: int) -> tuple[pa.Table, pa.Table]:
    """``n`` predictions over one second from ``start``, and their labels."""
    ids = [f"c{commit}-{i}" for i in range(n)]
    ts = pa.array([start + timedelta(seconds=i / n) for i in range(n)], TS)
    amount = rng.normal(50.0, 10.0, n)
    preds = pa.table(
        {
            "amount": amount,
            "age": rng.normal(40.0, 12.0, n),
            "_request_id": ids,
            "_ts": ts,
            "_model_version": ["1"] * n,
            "_served_by": ["primary"] * n,
            "_prediction": (amount > 60.0).astype(np.float64),
            "_score": rng.random(n),
            "_latency_ms": rng.gamma(4.0, 5.0, n),
        }
    )
    labels = pa.table({"request_id": ids, "label": (amount > 60.0).astype(np.float64), "ts": ts})
    return preds, labels


def build(root: Path, commits: int, rows: int) -> Lake:
    """Silver plus ``commits`` one-second commits of inference log and feedback, ending now."""
    lake = Lake(root)
    rng = np.random.default_rng(0)
    lake.append("silver", pa.table({"amount": rng.normal(50.0, 10.0, 5000), "age": rng.normal(40.0, 12.0, 5000)}))
    start = datetime.now(UTC) - timedelta(seconds=commits)
    for c in range(commits):
        preds, labels = _traffic(rng, rows, start + timedelta(seconds=c), c)
        lake.append("inference_log", preds)
        lake.append("feedback", labels)
    return lake


def _config(tmp: Path, lake: Lake) -> Path:
    (tmp / "landing").mkdir(exist_ok=True)
    config = tmp / "selfheal.yaml"
    config.write_text(
        f"home: {tmp / 'home'}\nlake:\n  root: {lake.root}\nlanding:\n  path: {tmp / 'landing'}\n"
        f"tracking_uri: sqlite:///{tmp / 'mlflow.db'}\ndata:\n  target: label\n"
        "thresholds:\n  freshness_seconds: {}\nhealing:\n  enabled: false\n"
    )
    return config


def ticks(config: Path, lake: Lake, n: int, rows: int) -> dict[str, list[float]]:
    """CPU seconds of ``n`` ticks of each healer ("old", "new"), alternating, one new commit of traffic before each."""
    from flows.config import load_config
    from flows.healer.machine import HealerLoop

    # Each healer has its own open tables; "old" keeps none, so every read opens its table afresh.
    snapshots = {"old": LatestSnapshots(max_tables=0), "new": LatestSnapshots()}
    loops = {}
    for mode, kept in snapshots.items():
        lake_module._SNAPSHOTS = kept
        loops[mode] = HealerLoop(load_config(config), str(config))
        loops[mode].tick()  # warm: imports, the monitor's reference profile, the first open of every table
    rng, cpu = np.random.default_rng(1), {"old": [], "new": []}
    for i in range(2 * n):
        mode = ("old", "new")[i % 2]
        preds, labels = _traffic(rng, rows, datetime.now(UTC) - timedelta(seconds=31), i)
        lake.append("inference_log", preds)
        lake.append("feedback", labels)
        lake_module._SNAPSHOTS = snapshots[mode]
        start = time.process_time()
        loops[mode].tick()
        cpu[mode].append(time.process_time() - start)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # delta-rs writes a checkpoint every 100 commits: 650 starts the ticks halfway between two.
    parser.add_argument("--commits", type=int, default=650, help="inference-log commits before the ticks")
    parser.add_argument("--rows", type=int, default=40, help="rows per commit (40 req/s, one flush a second)")
    parser.add_argument("--ticks", type=int, default=40, help="ticks of each healer, alternating old/new")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.pop("PREFECT_API_URL", None)  # a tick of an idle healer sends no events
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        lake = build(Path(tmp) / "lake", args.commits, args.rows)
        config = _config(Path(tmp), lake)
        print(
            f"lake: {args.commits} commits x {args.rows} rows of inference log and feedback "
            f"({time.perf_counter() - started:.0f} s to build); load average {os.getloadavg()[0]:.2f}"
        )
        cpu = ticks(config, lake, args.ticks, args.rows)
        med = {mode: statistics.median(values) for mode, values in cpu.items()}
        print(f"{args.ticks} ticks of each healer, alternating, one commit of traffic before each; CPU per tick:")
        for mode, values in cpu.items():
            print(f"  {mode}: median {med[mode] * 1000:7.1f} ms  min {min(values) * 1000:7.1f} ms")
        print(f"  old / new = {med['old'] / med['new']:.2f}; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
