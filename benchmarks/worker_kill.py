"""Requests lost when one worker is SIGKILLed under load: `selfheal serve` beside `mlflow models serve`.

Registers the serving benchmark's model (benchmarks/serving.py), starts each server with
the same number of workers, drives it with ``wrk`` (64 connections by default, 20 s) and,
``--kill-after`` seconds in, SIGKILLs one of its worker processes. Three servers: ``selfheal
serve`` as its default runs (replicas of one worker under the supervisor), the same with
``--front haproxy`` (a proxy that sends a request again when its worker dies before
answering; left out when haproxy is not installed) and ``mlflow models serve``. Prints,
per server and round, the requests wrk completed, the non-2xx answers and the socket
errors (connect, read, write, timeout): a failed request is either. Issue 17's target is
0 failed requests.

Usage::

    .venv/bin/python benchmarks/worker_kill.py [--rounds 1] [--duration 20] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)  # run as a script: import the packages, not benchmarks/ siblings

from benchmarks.shadow import serving_benchmark  # noqa: E402 - after the path fix


def workers_of(root: int) -> list[int]:
    """The server's worker processes: Python processes under ``root`` with no Python children.

    ``python -m serving`` is gunicorn's master with the workers as children; ``mlflow models
    serve`` starts a server whose workers are a level further down. Helpers such as
    multiprocessing's resource tracker are not workers.
    """
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if "python" not in Path(proc.exe()).name or "resource_tracker" in " ".join(proc.cmdline()):
                continue
            if not any("python" in Path(c.exe()).name for c in proc.children()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return sorted(found)


def kill_one_worker(master: int, after: float, killed: list[int]) -> None:
    """After ``after`` seconds, SIGKILL the first worker of ``master`` (recorded in ``killed``)."""
    time.sleep(after)
    candidates = workers_of(master)
    if candidates:
        os.kill(candidates[0], signal.SIGKILL)
        killed.append(candidates[0])
        print(f"  SIGKILL {candidates[0]} (one of the workers {candidates})", flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes (default 2; selfheal: as replicas of 1 worker)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per run (default 20)")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the run of the kill (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per server (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    return parser.parse_args()


def _run_with_kill(
    bench: ModuleType, wrk: str, script: Path, started: tuple[Any, str], args: argparse.Namespace
) -> tuple[list[int], str]:
    """wrk on a fresh server, one of its workers SIGKILLed ``--kill-after`` s in: (the killed pids, wrk's output)."""
    proc, url = started
    try:
        bench.run_wrk(wrk, url, script, args.connections, 3, args.threads)  # warm-up
        killed: list[int] = []
        killer = threading.Thread(target=kill_one_worker, args=(proc.pid, args.kill_after, killed))
        killer.start()
        text = bench.run_wrk(wrk, url, script, args.connections, args.duration, args.threads)
        killer.join()
    finally:
        bench.stop(proc)
    return killed, text


def main() -> int:
    bench = serving_benchmark()  # benchmarks/serving.py: model, servers, wrk
    args = _arguments()
    wrk, workdir, tracking_uri = bench.scratch("worker-kill")
    print(f"scratch folder {workdir}; {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    version = bench.register_model(tracking_uri, workdir)
    script, _ = bench.post_script(workdir)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": tracking_uri}
    # selfheal's default (serving.replicas: 2 of 1 worker), then the same behind the retrying front.
    replicas = ("--replicas", str(args.workers), "--workers", "1")
    fronted = (*replicas, "--front", "haproxy")
    starters = {
        "selfheal": lambda: bench.start_selfheal(workdir, env, tracking_uri, 1, *replicas),
        "selfheal+haproxy": lambda: bench.start_selfheal(workdir, env, tracking_uri, 1, *fronted),
        "mlflow": lambda: bench.start_mlflow(workdir, env, version, args.workers),
    }
    if shutil.which("haproxy") is None:
        print("no haproxy on PATH (Debian: apt-get install haproxy): the front is left out")
        del starters["selfheal+haproxy"]
    results: dict[str, list[tuple[int, int, int]]] = {name: [] for name in starters}
    try:
        for round_ in range(args.rounds):
            for name, start in starters.items():
                killed, text = _run_with_kill(bench, wrk, script, start(), args)  # both workers alive at the start
                result = bench.parse_wrk(name, args.connections, text)
                results[name].append((result.requests, result.non_2xx, result.socket_errors))
                print(
                    f"round {round_ + 1}: {name:<16} killed worker {killed or 'none found'}: "
                    f"{result.requests} requests, non-2xx {result.non_2xx}, socket errors {result.socket_errors} "
                    f"({result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms)",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _print_verdicts(args, results)
    return 0


def _print_verdicts(args: argparse.Namespace, results: dict[str, list[tuple[int, int, int]]]) -> None:
    print()
    print(f"one of {args.workers} workers SIGKILLed {args.kill_after:g} s into {args.duration} s of "
          f"wrk -t{args.threads} -c{args.connections}:")  # fmt: skip
    for name, runs in results.items():
        failed = [non_2xx + errors for _, non_2xx, errors in runs]
        total = [requests for requests, _, _ in runs]
        print(f"  {name:<16} failed requests per round {failed} of {total}")
    for name in (n for n in results if n.startswith("selfheal")):
        ours = [non_2xx + errors for _, non_2xx, errors in results[name]]
        print(f"target (issue 17): 0 failed requests for {name}: {'MET' if not any(ours) else 'MISSED'} ({ours})")


if __name__ == "__main__":
    raise SystemExit(main())
