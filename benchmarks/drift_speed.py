"""Drift-test speed: our ``compare`` against Evidently's DataDriftPreset on the same data.

20 numeric features, reference and current of 100k rows and of 1M rows each
(two features shifted by 0.5 sigma, one by 0.02 sigma, the rest unchanged).
Both tools get the same pandas frames, read from the same parquet files; load
time is excluded for both. Ours: median of 3 runs; Evidently: one run per size
(it takes minutes at 1M). Targets (issue 5): 100k <= 0.5 s, 1M <= 3 s, and >= 10x
faster than Evidently at both sizes.

Evidently needs pandas<3, so it runs in its own venv, created on first use at
``.bench-venvs/evidently`` (gitignored: machine-local, rebuilt by this script),
called in a subprocess. Run: ``.venv/bin/python benchmarks/drift_speed.py``
(``--sizes 100000`` for one size, ``--skip-peer`` to time ours only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.monitor.detectors import DriftThresholds, ReferenceProfile, compare

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".bench-venvs" / "evidently"
PEER_REQUIREMENTS = ["evidently", "pandas<3"]
FEATURES = 20
SHIFTS = {"f00": 0.5, "f01": 0.5, "f02": 0.02}

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset
    ref = pd.read_parquet(sys.argv[1]); cur = pd.read_parquet(sys.argv[2])
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    seconds = time.perf_counter() - start
    drifted = []
    for m in snapshot.dict()["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift"):
            p_value = "p_value" in m["metric_name"]
            hit = m["value"] < cfg["threshold"] if p_value else m["value"] >= cfg["threshold"]
            if hit:
                drifted.append(cfg["column"])
    print(json.dumps({"seconds": seconds, "drifted": sorted(drifted)}))
    """
)


def ensure_peer_venv() -> Path:
    """Create ``.bench-venvs/evidently`` with Evidently and pandas<3 if it is not there yet."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEER_VENV} (one time) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    version = subprocess.run(
        [str(python), "-c", "import evidently, pandas; print(evidently.__version__, pandas.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    print(f"peer: evidently {version[0]} (pandas {version[1]}) in {PEER_VENV.relative_to(ROOT)}")
    return python


def make_data(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(FEATURES)]
    ref = pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=names)
    cur = pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=names)
    for name, shift in SHIFTS.items():
        cur[name] += shift
    return ref, cur


def time_ours(ref: pd.DataFrame, cur: pd.DataFrame, runs: int = 3) -> tuple[float, float, list[str]]:
    thresholds = DriftThresholds()
    times, report = [], None
    for _ in range(runs):
        start = time.perf_counter()
        report = compare(ref, cur, thresholds)
        times.append(time.perf_counter() - start)
    profile = ReferenceProfile.from_data(ref, thresholds)
    reuse = []
    for _ in range(runs):
        start = time.perf_counter()
        compare(profile, cur, thresholds)
        reuse.append(time.perf_counter() - start)
    assert report is not None
    return statistics.median(times), statistics.median(reuse), sorted(report.drifted_features)


def time_peer(python: Path, ref_path: Path, cur_path: Path) -> dict[str, object]:
    out = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, str(ref_path), str(cur_path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"},
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    targets = {100_000: 0.5, 1_000_000: 3.0}
    python = None if args.skip_peer else ensure_peer_venv()
    print(f"machine: {os.cpu_count()} cores; {FEATURES} numeric features; shifted: {SHIFTS}")
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="drift-speed-") as tmp:
        for rows in args.sizes:
            ref, cur = make_data(rows, args.seed)
            ref_path, cur_path = Path(tmp) / f"ref-{rows}.parquet", Path(tmp) / f"cur-{rows}.parquet"
            ref.to_parquet(ref_path)
            cur.to_parquet(cur_path)
            ours, reuse, ours_drifted = time_ours(ref, cur)
            peer = time_peer(python, ref_path, cur_path) if python else None
            rows_out.append((rows, ours, reuse, ours_drifted, peer))
            peer_text = f"{peer['seconds']:.2f} s" if peer else "skipped"
            print(f"{rows:>9,} rows: ours {ours:.3f} s (reference profiled once: {reuse:.3f} s), evidently {peer_text}")
            print(f"           drifted  ours: {ours_drifted}")
            if peer:
                print(f"           drifted  evidently: {peer['drifted']}")
    print()
    print(f"{'rows':>9}  {'ours s':>8}  {'evidently s':>11}  {'speedup':>8}  {'target s':>8}  met")
    all_met = True
    for rows, ours, _, _, peer in rows_out:
        target = targets.get(rows)
        ratio = float(peer["seconds"]) / ours if peer else float("nan")  # type: ignore[arg-type]
        met = (target is None or ours <= target) and (peer is None or ratio >= 10.0)
        all_met &= met
        peer_s = f"{float(peer['seconds']):.2f}" if peer else "-"  # type: ignore[arg-type]
        print(
            f"{rows:>9,}  {ours:>8.3f}  {peer_s:>11}  {ratio:>7.1f}x  {target if target else '-':>8}  "
            f"{'yes' if met else 'NO'}"
        )
    print(f"targets (<= 0.5 s at 100k, <= 3 s at 1M, >= 10x Evidently): {'met' if all_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
