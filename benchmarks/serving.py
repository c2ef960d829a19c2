"""Model serving throughput and latency: `selfheal serve` against `mlflow models serve`.

Registers one model (a scikit-learn Pipeline: one-hot encoding + 100-tree
histogram gradient boosting, 12 numeric and 1 categorical feature), serves it
with ``mlflow models serve --env-manager local`` and with ``python -m serving``
(what ``selfheal serve`` execs; inference log, breaker and fallback on) with the
same number of worker processes, and drives both with the same ``wrk`` load
(same single-record body, MLflow's ``{"dataframe_records": [...]}`` which both
accept) at 16 and 64 connections on the loopback interface. A third server is
the ceiling: an empty FastAPI endpoint (it reads nothing and answers ``{}``) under
the same gunicorn + uvicorn workers, the most this stack can answer on this
machine. Runs alternate between the servers for several rounds (the idle ones use
no CPU) and the medians are reported, so background load hits them all alike.

Usage::

    .venv/bin/python benchmarks/serving.py [--workers 2] [--duration 20] [--connections 16 64] [--front haproxy]

Prints requests/s, p50 and p99 for each server and the ratios. Targets (issue 17):
>= 10x mlflow's throughput at 16 and 64 connections, p99 <= 10 ms at 16 connections,
and >= 50% of the empty endpoint's throughput.
Installs ``wrk`` (Debian package) when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)  # this file is called serving.py: it must not shadow the package

from serving.processes import free_port, http_ok, process_group, wait_until  # noqa: E402 - after the path fix
from serving.processes import stop as stop_processes  # noqa: E402

MODEL = "bench-gbm"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Result:
    server: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing the Debian package (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk")
    return found


def scratch(name: str) -> tuple[str, Path, str]:
    """wrk (installed when missing), a scratch folder and its SQLite tracking URI; telemetry off."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix=f"selfheal-bench-{name}-"))
    return wrk, workdir, f"sqlite:///{workdir / 'mlflow.db'}"


def post_script(workdir: Path) -> tuple[Path, str]:
    """wrk's script POSTing one record as ``{"dataframe_records": [...]}`` (every server takes it), and the body."""
    record = json.loads(make_data(rows=50, seed=9)[0].iloc[[7]].to_json(orient="records"))
    body = json.dumps({"dataframe_records": record})
    script = workdir / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n'
    )
    return script, body


def make_data(rows: int = 20_000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=12, n_informative=7, weights=[0.9], random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(12)])
    frame["channel"] = np.random.default_rng(seed).choice(["pos", "online", "atm", "transfer"], size=rows)
    return frame, y


def register_model(tracking_uri: str, workdir: Path) -> str:
    """Train and register two versions (@previous, @champion); return the champion's version."""
    import mlflow
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from serving.modelio import log_sklearn_model
    from serving.registry import CHAMPION, PREVIOUS, ModelRegistry

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.create_experiment("serving-benchmark", artifact_location=str(workdir / "artifacts"))
    frame, y = make_data()
    versions = []
    for seed in (1, 2):
        pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["channel"])], remainder="passthrough")
        model = Pipeline([("pre", pre), ("gbm", HistGradientBoostingClassifier(max_iter=100, random_state=seed))])
        model.fit(frame, y)
        with mlflow.start_run(experiment_id=experiment):
            info = log_sklearn_model(model, frame.head(5), registered_model_name=MODEL)
        versions.append(str(info.registered_model_version))
    registry = ModelRegistry(MODEL, tracking_uri=tracking_uri)
    registry.set_alias(PREVIOUS, versions[0])
    registry.set_alias(CHAMPION, versions[1])
    return versions[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    try:
        wait_until(lambda: proc.poll() is not None or http_ok(url), timeout, url, interval=0.5)
    except TimeoutError:
        raise SystemExit(f"{url} did not answer within {timeout}s") from None
    if proc.poll() is not None:
        raise SystemExit(f"server exited with {proc.returncode} before answering {url}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (its leader waits for its workers), SIGKILL after 60 s."""
    stop_processes(process_group(proc.pid), grace=60.0)
    proc.wait(10)


def loaded_workers(url: str) -> int:
    """Workers that report a loaded primary model in the shared metrics."""
    text = httpx.get(f"{url}/metrics").text
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("selfheal_model_version{") and 'role="primary"' in line and not line.endswith(" 0.0")
    )


def load_arguments(parser: argparse.ArgumentParser, rounds: str) -> None:
    """The options of a wrk benchmark against the model server (this one's and benchmarks/shadow.py's)."""
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help=f"alternating runs per {rounds} (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")


def parse_wrk(server: str, connections: int, text: str) -> Result:
    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if not match:
            raise ValueError(f"no {pct}% latency in wrk output:\n{text}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return Result(
        server,
        connections,
        rps,
        latency("50"),
        latency("99"),
        requests,
        int(non_2xx.group(1)) if non_2xx else 0,
        sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int, threads: int) -> str:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def measure(wrk: str, url: str, script: Path, name: str, c: int, seconds: int, warmup: int, threads: int) -> Result:
    run_wrk(wrk, url, script, c, warmup, threads)
    result = parse_wrk(name, c, run_wrk(wrk, url, script, c, seconds, threads))
    print(
        f"  {name:<9} c={c:<3} {result.rps:>8.0f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        f"  ({result.requests} requests, non-2xx {result.non_2xx}, socket errors {result.socket_errors})",
        flush=True,
    )
    return result


def start_mlflow(workdir: Path, env: dict[str, str], version: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow, "models", "serve", "-m", f"models:/{MODEL}/{version}", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port), "-w", str(workers),
    ]  # fmt: skip
    with open(workdir / "mlflow-serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/ping", proc)
    return proc, f"http://127.0.0.1:{port}/invocations"


def start_selfheal(
    workdir: Path, env: dict[str, str], tracking_uri: str, workers: int, *options: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m serving`` with ``workers`` workers (and ``options``, e.g. ``--replicas 2``) on a free port."""

    port = free_port()
    env = {
        **env,
        "PYTHONPATH": str(REPO_ROOT),
        "SELFHEAL_TRACKING_URI": tracking_uri,
        "SELFHEAL_MODEL_NAME": MODEL,
        "SELFHEAL_LAKE_ROOT": str(workdir / "lake"),
        "SELFHEAL_DEAD_LETTER_DIR": str(workdir / "dead-letter"),
        "SELFHEAL_RUNTIME_DIR": str(workdir / "run"),
        "SELFHEAL_INFERENCE_LOG": "true",
    }
    cmd = [sys.executable, "-m", "serving", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    cmd += options
    with open(workdir / "selfheal-serve.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_http(f"http://127.0.0.1:{port}/ready", proc)
    with contextlib.suppress(TimeoutError):  # measured anyway: a worker still loading shows in the figures
        wait_until(lambda: loaded_workers(f"http://127.0.0.1:{port}") >= workers, 60, "every worker's model", 0.5)
    return proc, f"http://127.0.0.1:{port}/predict"


#: The ceiling: what gunicorn + uvicorn answer with no work behind the endpoint.
EMPTY_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    await request.body()
    return Response(b"{}", media_type="application/json")


@app.get("/ready")
async def ready() -> Response:
    return Response(b"{}", media_type="application/json")
"""


def start_empty(workdir: Path, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """The empty endpoint under gunicorn with the model server's worker class and count."""
    port = free_port()
    (workdir / "empty_app.py").write_text(EMPTY_APP)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    cmd = [
        gunicorn, "empty_app:app", "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers),
        "-b", f"127.0.0.1:{port}", "--log-level", "warning",
    ]  # fmt: skip
    with open(workdir / "empty-serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/ready", proc)
    return proc, f"http://127.0.0.1:{port}/predict"


def median_result(runs: list[Result]) -> Result:
    def med(values: list[float]) -> float:
        return float(np.median(values))

    first = runs[0]
    return Result(
        first.server,
        first.connections,
        med([r.rps for r in runs]),
        med([r.p50_ms for r in runs]),
        med([r.p99_ms for r in runs]),
        sum(r.requests for r in runs),
        sum(r.non_2xx for r in runs),
        sum(r.socket_errors for r in runs),
    )


def _measure_rounds(
    args: argparse.Namespace, wrk: str, urls: dict[str, str], script: Path
) -> dict[tuple[str, int], list[Result]]:
    """Every round's result per server and connection count."""
    runs: dict[tuple[str, int], list[Result]] = {}
    # Both servers stay up (idle when not measured); runs alternate so background load hits both alike.
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        names = list(urls)
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for c in args.connections:
            for name in order:
                result = measure(wrk, urls[name], script, name, c, args.duration, args.warmup, args.threads)
                runs.setdefault((name, c), []).append(result)
    return runs


def _print_report(args: argparse.Namespace, runs: dict[tuple[str, int], list[Result]], logged: int) -> None:
    """The medians per connection count, the ratios and the verdict against each target."""
    print()
    front = f"; selfheal behind {args.front} ({args.workers} replicas of 1 worker)" if args.front != "none" else ""
    print(
        f"median of {args.rounds} rounds of {args.duration}s, wrk -t{args.threads}, {args.workers} workers each{front}"
    )
    print(f"{'connections':>11} | {'mlflow req/s':>12} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'selfheal req/s':>14} {'p50 ms':>8} {'p99 ms':>8} | {'throughput x':>12} {'p99 ratio':>9}")  # fmt: skip
    verdicts = []
    for c in args.connections:
        theirs, ours = median_result(runs[("mlflow", c)]), median_result(runs[("selfheal", c)])
        empty = median_result(runs[("empty", c)])
        speedup = ours.rps / theirs.rps
        p99_ratio = ours.p99_ms / theirs.p99_ms
        print(
            f"{c:>11} | {theirs.rps:>12.0f} {theirs.p50_ms:>8.2f} {theirs.p99_ms:>8.2f} | "
            f"{ours.rps:>14.0f} {ours.p50_ms:>8.2f} {ours.p99_ms:>8.2f} | {speedup:>11.2f}x {p99_ratio:>9.3f}"
        )
        errors = ours.non_2xx + ours.socket_errors + theirs.non_2xx + theirs.socket_errors
        if errors:
            print(f"{'':>11}   non-2xx or socket errors: mlflow {theirs.non_2xx + theirs.socket_errors}, "
                  f"selfheal {ours.non_2xx + ours.socket_errors}")  # fmt: skip
        share = ours.rps / empty.rps
        print(
            f"{'':>11}   empty endpoint: {empty.rps:.0f} req/s, p99 {empty.p99_ms:.2f} ms;"
            f" selfheal is {share:.0%} of it"
        )
        verdicts.append((f"throughput >= 10x mlflow at {c} connections", speedup >= 10.0, f"{speedup:.2f}x"))
        verdicts.append((f"throughput >= 50% of the empty endpoint at {c} connections", share >= 0.5, f"{share:.0%}"))
        if c == 16:
            verdicts.append(("p99 <= 10 ms at 16 connections", ours.p99_ms <= 10.0, f"{ours.p99_ms:.2f} ms"))
    print()
    print(f"selfheal inference log rows written: {logged} (breaker and fallback on)")
    for what, ok, value in verdicts:
        print(f"target {what}: {'MET' if ok else 'MISSED'} ({value})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_arguments(parser, rounds="server and load")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--front",
        choices=["none", "haproxy"],
        default="none",
        help="haproxy: selfheal as --workers replicas of 1 worker behind the retrying front (serving.front)",
    )
    args = parser.parse_args()

    wrk, workdir, tracking_uri = scratch("serving")
    load = os.getloadavg()[0]
    print(
        f"scratch folder {workdir}; {os.cpu_count()} CPUs (load average {load:.1f}); {args.workers} workers per server"
    )
    version = register_model(tracking_uri, workdir)
    script, body = post_script(workdir)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": tracking_uri}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        servers["mlflow"] = start_mlflow(workdir, env, version, args.workers)
        if args.front == "none":
            servers["selfheal"] = start_selfheal(workdir, env, tracking_uri, args.workers)
        else:
            fronted = ("--replicas", str(args.workers), "--front", args.front)
            servers["selfheal"] = start_selfheal(workdir, env, tracking_uri, 1, *fronted)
        servers["empty"] = start_empty(workdir, env, args.workers)
        for name, (_, url) in servers.items():
            answer = httpx.post(url, content=body, headers={"content-type": "application/json"}).text.strip()
            print(f"{name} answers: {answer}", flush=True)
        runs = _measure_rounds(args, wrk, {name: url for name, (_, url) in servers.items()}, script)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    logged = _logged_rows(workdir / "lake")

    _print_report(args, runs, logged)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _logged_rows(lake_root: Path) -> int:
    from checkpoints import Lake

    lake = Lake(lake_root)
    return lake.read("inference_log", columns=["_request_id"]).num_rows if lake.exists("inference_log") else 0


if __name__ == "__main__":
    raise SystemExit(main())
