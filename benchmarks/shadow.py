"""Shadow mirroring's cost to the champion: p99 with and without a shadow challenger, same server, same load.

Registers the serving benchmark's model twice (champion and challenger: 100-tree
histogram gradient boosting behind one-hot encoding), starts one ``python -m
serving`` (inference log on) and drives it with ``wrk`` (one single-record body,
16 connections by default). Runs alternate between *no release* and a *shadow
release* mirroring ``--share`` of the requests (1.0: every request) to the
challenger; the release is switched by writing the registered model's
``selfheal.release`` tag, exactly as ``selfheal release start --mode shadow``
does, and each run starts once every worker reports it. Before the rounds, one shadow
release under light load lasts until every worker's shadow process has loaded the
challenger and predicted (``warm_up_shadow``: it starts once per release, at the lowest CPU
priority), so the rounds measure mirroring, not that start; its time is printed.

Usage::

    .venv/bin/python benchmarks/shadow.py [--rounds 3] [--duration 15] [--share 1.0] [--control]

Prints the champion's p50/p99 and throughput in both states and the p99 ratio
(target: <= 1.10), plus how many mirrored rows the challenger predicted or dropped.
``--control`` runs the same rounds with no release in either state: the ratio it prints
is the benchmark's own noise, what a shadow that cost nothing would measure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)  # run as a script: import the packages, not benchmarks/ siblings

from serving.processes import wait_until  # noqa: E402 - after the path fix


def serving_benchmark() -> ModuleType:
    """benchmarks/serving.py (its model, servers and wrk driver), loaded by path once per process.

    By path, not ``import benchmarks.serving``: it is also a script, and shadow.py, startup.py
    and worker_kill.py share its one loaded copy.
    """
    if "bench_serving" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).parent / "serving.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["bench_serving"]


def set_release(tracking_uri: str, model: str, challenger: str | None, share: float) -> None:
    """Start (challenger given) or end a shadow release by writing the release tag."""
    from serving.registry import CHAMPION, RELEASE_TAG, ModelRegistry
    from serving.release import ReleaseState

    registry = ModelRegistry(model, tracking_uri=tracking_uri)
    current = registry.by_alias(CHAMPION)
    assert current is not None, f"{model} has no @{CHAMPION}"
    champion = current.version
    state = ReleaseState(
        release_id=f"bench-{uuid.uuid4().hex[:6]}",
        mode="shadow",
        challenger=challenger or "0",
        champion=champion,
        share=share if challenger else 0.0,
        status="running" if challenger else "aborted",
    )
    registry.set_model_tag(RELEASE_TAG, state.to_tag())


def wait_release(base: str, shadow: bool, workers: int, timeout: float = 60.0) -> None:
    """Until ``workers * 3`` fresh connections in a row all see (or all do not see) the release."""
    try:
        wait_until(
            lambda: every_worker(base, workers, lambda release: (release is not None) == shadow),
            timeout,
            "every worker to see the release",
            interval=0.05,
        )
    except TimeoutError:
        verb = "start" if shadow else "stop"
        raise SystemExit(f"the workers did not {verb} mirroring within {timeout:g}s") from None


def every_worker(base: str, workers: int, holds: Callable[[dict[str, Any] | None], bool]) -> bool:
    """Whether ``workers * 3`` ``/ready`` answers in a row, each on a new connection, have a release that ``holds``."""
    with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return all(holds(client.get(f"{base}/ready").json().get("release")) for _ in range(workers * 3))


def shadow_counts(base: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    from serving.client import ServingClient

    with ServingClient(base) as server:
        text = server.metrics(timeout=10)
    for line in text.splitlines():
        if line.startswith("selfheal_shadow_rows_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def warm_up_shadow(wrk: str, url: str, script: Path, base: str, workers: int, timeout: float = 180.0) -> float:
    """Seconds of light load (4 connections) until every worker's shadow process has predicted mirrored rows.

    A worker starts its shadow process at the first mirrored batch, and the process imports
    scikit-learn and loads the challenger at the lowest CPU priority: seconds on an idle
    machine, much longer under the rounds' load. That happens once per release, so it is
    done here, before the rounds, which measure mirroring itself.
    """
    bench = sys.modules["bench_serving"]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        bench.run_wrk(wrk, url, script, 4, 2, 1)
        if every_worker(base, workers, _shadow_predicted):
            return time.monotonic() - started
    raise SystemExit(f"the shadow processes did not predict within {timeout:g} s")


def _shadow_predicted(release: dict[str, Any] | None) -> bool:
    return bool(((release or {}).get("mirrored_rows") or {}).get("predicted"))


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes: its master and workers, and the shadow processes."""
    import psutil

    totals = {"server": 0.0, "shadow": 0.0}
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            kind = "shadow" if "serving.shadow" in proc.cmdline() else "server"
            times = proc.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        totals[kind] += times.user + times.system
    return totals


def _arguments(bench: ModuleType) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.load_arguments(parser, rounds="state")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--share", type=float, default=1.0, help="share of requests mirrored (default 1.0)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A control: no release in either state; the ratio is then the benchmark's own noise",
    )
    return parser.parse_args()


@dataclass(frozen=True)
class _Server:
    """The server under test and what drives it."""

    wrk: str
    url: str
    script: Path
    pid: int
    tracking_uri: str
    challenger: str

    @property
    def base(self) -> str:
        return self.url.removesuffix("/predict")


def _rounds(
    bench: ModuleType, server: _Server, args: argparse.Namespace
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The rounds, each state in turn (order alternating): wrk results and server/shadow CPU seconds by state."""
    runs: dict[str, list[Any]] = {"none": [], "shadow": []}
    cpu: dict[str, dict[str, float]] = {state: {"server": 0.0, "shadow": 0.0} for state in runs}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        for state in ["none", "shadow"] if round_ % 2 == 0 else ["shadow", "none"]:
            mirrored = state == "shadow" and not args.control
            set_release(server.tracking_uri, bench.MODEL, server.challenger if mirrored else None, args.share)
            wait_release(server.base, mirrored, args.workers)
            before = cpu_seconds(server.pid)
            result = bench.measure(
                server.wrk, server.url, server.script, state, args.connections, args.duration, args.warmup, args.threads
            )
            after = cpu_seconds(server.pid)
            for kind in after:
                cpu[state][kind] += after[kind] - before.get(kind, 0.0)
            runs[state].append(result)
    return runs, cpu


def main() -> int:
    bench = serving_benchmark()
    args = _arguments(bench)
    wrk, workdir, tracking_uri = bench.scratch("shadow")
    print(f"scratch folder {workdir}; {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    champion = bench.register_model(tracking_uri, workdir)
    challenger = str(int(champion) - 1)  # the benchmark's @previous: same shape, another seed
    script, _ = bench.post_script(workdir)
    env = {**os.environ, "SELFHEAL_POLL_SECONDS": "1"}
    proc, url = bench.start_selfheal(workdir, env, tracking_uri, args.workers)
    server = _Server(wrk, url, script, proc.pid, tracking_uri, challenger)
    try:
        if args.control:
            print("A/A control: no release in either state (the 'shadow' rows below mirror nothing)")
        else:
            set_release(tracking_uri, bench.MODEL, challenger, args.share)
            wait_release(server.base, True, args.workers)
            warm = warm_up_shadow(wrk, url, script, server.base, args.workers)
            print(f"shadow processes started and the challenger loaded in {warm:.1f} s (light load; not measured)")
        before_rounds = shadow_counts(server.base)
        runs, cpu = _rounds(bench, server, args)
        after_rounds = shadow_counts(server.base)
        mirrored = {k: v - before_rounds.get(k, 0.0) for k, v in after_rounds.items()}
    finally:
        bench.stop(proc)
    _report(bench, args, runs, cpu, mirrored)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _report(
    bench: ModuleType,
    args: argparse.Namespace,
    runs: dict[str, list[Any]],
    cpu: dict[str, Any],
    mirrored: dict[str, float],
) -> None:
    none, shadow = bench.median_result(runs["none"]), bench.median_result(runs["shadow"])
    ratio = shadow.p99_ms / none.p99_ms
    print()
    print(f"median of {args.rounds} rounds of {args.duration}s, wrk -t{args.threads} -c{args.connections}, "
          f"{args.workers} workers, shadow share {args.share:g}{' (A/A control)' if args.control else ''}")  # fmt: skip
    for name, r in (("no shadow", none), ("shadow", shadow)):
        print(f"  {name:<10} {r.rps:>8.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
              f"(non-2xx {r.non_2xx}, socket errors {r.socket_errors})")  # fmt: skip
    print(f"  mirrored rows: {json.dumps({k: int(v) for k, v in sorted(mirrored.items())})}")
    for name, used in cpu.items():
        print(f"  CPU s per round (warm-up included), {name:<6}: server {used['server'] / args.rounds:6.1f}, "
              f"shadow processes {used['shadow'] / args.rounds:5.1f}")  # fmt: skip
    p99s = {k: [float(r.p99_ms) for r in v] for k, v in runs.items()}
    print(f"  p99 per round: {json.dumps({k: [round(x, 2) for x in v] for k, v in p99s.items()})}")
    print(f"  p99 ratio shadow / none: {ratio:.3f} (spread of rounds: {np.ptp(p99s['none']):.2f} ms without)")
    if args.control:
        print(f"A/A control (no target): a shadow that cost nothing would measure about {ratio:.3f}")
    else:
        verdict = "MET" if ratio <= 1.10 else "MISSED"
        print(f"target champion p99 with shadow <= 1.10 x without: {verdict} ({ratio:.3f})")


if __name__ == "__main__":
    raise SystemExit(main())
