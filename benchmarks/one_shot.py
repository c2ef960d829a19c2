"""``selfheal monitor --once`` and ``selfheal heal --once``: CPU, wall and imports per fresh process.

Prepares a small lake with a champion the way a user gets one (``selfheal data
generate``, ``selfheal pipeline run``: a real model in a real MLflow sqlite store),
then a few minutes of served traffic in the inference log, so the monitor pass has
a drift window to test. Each timed run gets a fresh copy of that folder (the pass
moves watermarks, the tick writes incidents) and a fresh process, with no Prefect
API configured. With ``--baseline-python`` (another tree's venv python, e.g. of an
older commit) the same commands run with it too, alternating with ours, and the
ratios are printed.

CPU is the child's user + system time (``os.wait4``): on a shared, loaded machine it
moves far less than wall time, which is printed too but is no verdict there. One more
run of each command under ``python -X importtime`` gives the import time and whether
Prefect, MLflow and scikit-learn were imported at all.

Run: ``.venv/bin/python benchmarks/one_shot.py [--runs 5] [--baseline-python ../old/.venv/bin/python]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package: put the repository root there instead.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from checkpoints import Lake

COMMANDS = {"monitor --once": ["monitor", "--once"], "heal --once": ["heal", "--once"]}
#: Relative paths resolve against the config's folder, so a copy of the folder is a lake of its own.
CONFIG = """\
project: one-shot-benchmark
model_name: fraud-detector
home: .selfheal
lake: {root: .selfheal/lake}
landing: {path: .selfheal/landing, settle_seconds: 0}
data: {target: is_fraud, task: binary, time_column: event_time, id_columns: [transaction_id]}
healing: {enabled: false}
"""
HEAVY = ("prefect", "mlflow", "sklearn", "scipy.stats")


@dataclass(frozen=True)
class Run:
    """One timed process: CPU (user + sys) and wall seconds."""

    cpu: float
    wall: float


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "SELFHEAL_", "MLFLOW_"))}
    env.update(SELFHEAL_CONFIG=str(folder / "selfheal.yaml"), PREFECT_HOME=str(folder / "prefect"))
    return env


def _selfheal(python: str, argv: list[str], folder: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    # cwd is the lake's folder: no tree's flows/ package is there to shadow the one `python` has installed.
    return subprocess.Popen(
        [python, *extra, "-m", "flows.cli", *argv],
        cwd=folder,
        env=_environment(folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _traffic(lake: Lake, version: str, rows: int = 1200) -> None:
    """A few minutes of served predictions of the newest silver rows, as the server's log writer appends them."""
    silver = lake.read("silver")
    features = [c for c in silver.column_names if not c.startswith("_") and c not in ("is_fraud", "transaction_id")]
    served = silver.select(features).slice(max(0, silver.num_rows - rows))
    n, now, rng = served.num_rows, datetime.now(UTC), np.random.default_rng(0)
    score = rng.random(n)
    log = served.append_column("_request_id", pa.array([f"bench-{i}" for i in range(n)]))
    for name, column in (
        ("_ts", pa.array([now - timedelta(seconds=240 - 200 * i / n) for i in range(n)], pa.timestamp("us", tz="UTC"))),
        ("_model_version", pa.array([version] * n)),
        ("_served_by", pa.array(["primary"] * n)),
        ("_prediction", pa.array((score > 0.5).astype(np.float64))),
        ("_score", pa.array(score)),
        ("_latency_ms", pa.array(rng.gamma(4.0, 2.0, n))),
    ):
        log = log.append_column(name, column)
    for part in range(4):  # one commit a minute
        lake.append("inference_log", log.slice(part * n // 4, n // 4))


def prepare(folder: Path, python: str) -> None:
    """Landing batches, one pipeline run (a champion), then served traffic, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "selfheal.yaml").write_text(CONFIG)
    for argv in (["data", "generate", "--batches", "3", "--rows", "1000"], ["pipeline", "run"]):
        proc = _selfheal(python, argv, folder)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"selfheal {' '.join(argv)} failed:\n{err.decode()[-2000:]}")
    from serving.registry import CHAMPION, ModelRegistry

    champion = ModelRegistry("fraud-detector", tracking_uri=f"sqlite:///{folder / '.selfheal' / 'mlflow.db'}")
    ref = champion.by_alias(CHAMPION)
    if ref is None:
        raise SystemExit("the pipeline run promoted no champion")
    _traffic(Lake(folder / ".selfheal" / "lake"), ref.version)


def timed(python: str, argv: list[str], template: Path, scratch: Path) -> Run:
    """One fresh process of ``selfheal argv`` on a fresh copy of the prepared folder."""
    folder = scratch / f"run-{time.monotonic_ns()}"
    shutil.copytree(template, folder)
    started = time.perf_counter()
    proc = _selfheal(python, argv, folder)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(folder, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{python} selfheal {' '.join(argv)} exited {proc.returncode}:\n{err.decode()[-2000:]}")
    return Run(usage.ru_utime + usage.ru_stime, wall)


def imports(python: str, argv: list[str], template: Path, scratch: Path) -> tuple[float, list[str]]:
    """Seconds of imports (``-X importtime``, top-level cumulative) and which of ``HEAVY`` were imported."""
    folder = scratch / f"imports-{time.monotonic_ns()}"
    shutil.copytree(template, folder)
    _, err = _selfheal(python, argv, folder, extra=("-X", "importtime")).communicate()
    shutil.rmtree(folder, ignore_errors=True)
    total, seen = 0, set()
    for line in err.decode(errors="replace").splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if found is None:
            continue
        if len(found[2]) == 1:  # a top-level import: its cumulative time holds its children's
            total += int(found[1])
        seen.add(found[3])
    return total / 1e6, [m for m in HEAVY if m in seen]


def _report(name: str, runs: dict[str, list[Run]], imported: dict[str, tuple[float, list[str]]]) -> None:
    print(f"{name}:")
    for tree, values in runs.items():
        cpu = statistics.median(r.cpu for r in values)
        wall = statistics.median(r.wall for r in values)
        seconds, heavy = imported[tree]
        print(
            f"  {tree:<8} CPU median {cpu:5.2f} s  wall median {wall:5.2f} s  "
            f"imports {seconds:5.2f} s  heavy imported: {', '.join(heavy) or 'none'}"
        )
    if len(runs) == 2:
        cpu = {t: statistics.median(r.cpu for r in v) for t, v in runs.items()}
        wall = {t: statistics.median(r.wall for r in v) for t, v in runs.items()}
        ratio = f"CPU {cpu['baseline'] / cpu['this']:.2f}x, wall {wall['baseline'] / wall['this']:.2f}x"
        print(f"  baseline / this: {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed processes per command and tree (median)")
    parser.add_argument("--baseline-python", default=None, help="another tree's venv python to compare with")
    parser.add_argument("--workdir", default=None, help="keep the prepared lake here (default: a temp folder)")
    args = parser.parse_args()
    pythons = {"this": sys.executable}
    if args.baseline_python:
        pythons["baseline"] = args.baseline_python
    with tempfile.TemporaryDirectory(prefix="selfheal-one-shot-") as tmp:
        template = Path(args.workdir) if args.workdir else Path(tmp) / "template"
        started = time.perf_counter()
        if not (template / "selfheal.yaml").exists():
            prepare(template, sys.executable)
        print(f"lake with a champion and 1200 served rows: {time.perf_counter() - started:.0f} s to prepare")
        print(f"load average at start {os.getloadavg()[0]:.2f} (CPU is the child's user+sys; wall is no verdict here)")
        for name, argv in COMMANDS.items():
            runs: dict[str, list[Run]] = {tree: [] for tree in pythons}
            for _ in range(args.runs):  # alternate the trees so both see the same load
                for tree, python in pythons.items():
                    runs[tree].append(timed(python, argv, template, Path(tmp)))
            imported = {tree: imports(python, argv, template, Path(tmp)) for tree, python in pythons.items()}
            _report(name, runs, imported)
        print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
