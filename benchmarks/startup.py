"""Cold start: `selfheal serve` to ``/ready`` beside `mlflow models serve` to ``/ping``, same model, same run.

Registers the serving benchmark's model (benchmarks/serving.py: a one-hot + 100-tree
histogram gradient boosting Pipeline, @champion and @previous) in a fresh SQLite store,
then starts each server cold ``--rounds`` times, alternating, and measures from the
``exec`` to the first 200 of its readiness endpoint (``/ready``: the champion loaded and
warmed up; MLflow's ``/ping``). Also reported: the CPU seconds the server's processes used
until then (on a busy machine the wall time says little), and one ``--profile-startup``
profile of ours (what took how long).

Ours runs as ``selfheal serve`` runs it, with a model cache (``serving.model_cache``). Its
very first start, with the cache empty, is measured and printed on its own: it downloads
the versions, imports scikit-learn and keeps their verified compiled forms. The rounds are
the starts after that (a restart, a replacement for a killed server): from the compiled
forms, without scikit-learn until the server is ready.

Usage::

    .venv/bin/python benchmarks/startup.py [--rounds 5] [--workers 2]

The target (issue 17) is a median <= 2 s to ``/ready`` on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)  # run as a script: import the packages, not benchmarks/ siblings

from benchmarks.shadow import serving_benchmark  # noqa: E402 - after the path fix
from serving.processes import free_port  # noqa: E402


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def time_to_answer(
    command: list[str], env: dict[str, str], url: str, log: Path, timeout: float = 120.0
) -> tuple[float, float]:
    """Start ``command``; seconds from the exec to the first 200 from ``url``, and the CPU seconds used by then."""
    bench = serving_benchmark()
    client = httpx.Client(timeout=1.0)
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[:4]} exited with {proc.returncode} before {url} answered (see {log})")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started, _tree_cpu(proc.pid)
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"{url} did not answer within {timeout:g} s (see {log})")
            time.sleep(0.02)
    finally:
        client.close()
        bench.stop(proc)


def commands(
    workdir: Path, tracking_uri: str, version: str, workers: int, port: int
) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """Each server's command, environment and readiness URL."""
    bench = serving_benchmark()
    bin_dir = Path(sys.executable).parent
    base = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": tracking_uri}
    ours = {
        **base,
        "PYTHONPATH": str(REPO_ROOT),
        "SELFHEAL_TRACKING_URI": tracking_uri,
        "SELFHEAL_MODEL_NAME": bench.MODEL,
        "SELFHEAL_LAKE_ROOT": str(workdir / "lake"),
        "SELFHEAL_DEAD_LETTER_DIR": str(workdir / "dead-letter"),
        "SELFHEAL_RUNTIME_DIR": str(workdir / "run"),
        "SELFHEAL_MODEL_CACHE_DIR": str(workdir / "model-cache"),
    }
    mlflow = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{bench.MODEL}/{version}"]
    mlflow += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    selfheal = [sys.executable, "-m", "serving", "--port", str(port), "--workers", str(workers)]
    return {
        "selfheal": (selfheal, ours, f"http://127.0.0.1:{port}/ready"),
        "mlflow": (mlflow, base, f"http://127.0.0.1:{port}/ping"),
    }


def profile(workdir: Path, command: list[str], env: dict[str, str], url: str) -> str:
    """One start with ``--profile-startup``: the first worker's profile from the log."""
    log = workdir / "profile.log"
    time_to_answer([*command, "--profile-startup"], env, url, log)
    lines = log.read_text().splitlines()
    first = next((i for i, line in enumerate(lines) if "start-up profile" in line), None)
    if first is None:
        return "(no profile in the log)"
    table = [lines[first]]
    for line in lines[first + 1 :]:
        if not line.startswith("  "):
            break
        table.append(line)
    return "\n".join(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="cold starts of each server (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="workers per server (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    workdir = Path(tempfile.mkdtemp(prefix="selfheal-bench-startup-"))
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    print(f"scratch folder {workdir}; {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})", flush=True)
    version = serving_benchmark().register_model(tracking_uri, workdir)
    runs: dict[str, list[tuple[float, float]]] = {"selfheal": [], "mlflow": []}
    command, env, url = commands(workdir, tracking_uri, version, args.workers, free_port())["selfheal"]
    first, first_cpu = time_to_answer(command, env, url, workdir / "selfheal.log")
    print(f"first start (empty model cache): selfheal {first:6.2f} s to ready ({first_cpu:.2f} CPU s)", flush=True)
    for round_no in range(args.rounds):
        for name, (command, env, url) in commands(workdir, tracking_uri, version, args.workers, free_port()).items():
            seconds, cpu = time_to_answer(command, env, url, workdir / f"{name}.log")
            runs[name].append((seconds, cpu))
            print(
                f"round {round_no + 1}: {name:<8} {seconds:6.2f} s to {url.rsplit('/', 1)[1]} ({cpu:.2f} CPU s)",
                flush=True,
            )
    command, env, url = commands(workdir, tracking_uri, version, args.workers, free_port())["selfheal"]
    print(profile(workdir, command, env, url))
    print(
        f"\nmedian of {args.rounds} cold starts after the first, {args.workers} workers each"
        f" (load average {os.getloadavg()[0]:.1f}):"
    )
    for name, results in runs.items():
        wall = float(np.median([r[0] for r in results]))
        cpu = float(np.median([r[1] for r in results]))
        endpoint = "/ready" if name == "selfheal" else "/ping"
        print(f"  {name:<8} {wall:6.2f} s to {endpoint:<6} {cpu:6.2f} CPU s")
    ours, theirs = (float(np.median([r[0] for r in runs[n]])) for n in ("selfheal", "mlflow"))
    print(f"  selfheal / mlflow: {ours / theirs:.2f}x; target: selfheal <= 2 s on an idle machine")
    print(f"  selfheal's first start, empty model cache: {first:.2f} s")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
