"""The pipeline on 1,000,000 generated rows: wall time per stage and Prefect's share of it.

The same stage functions run twice in this one process, on identical copies of
the data, each into its own lake and MLflow store:

* as the Prefect flow (``pipeline_flow``: tasks, one transaction, rollback hooks);
* plainly, calling each task's function (``task.fn``) in the same order.

Prefect's orchestration overhead = (flow wall time - plain wall time) / flow wall
time; target (issue 3) <= 10%. The ephemeral Prefect server is started by a
warm-up flow before timing (its ~10 s start-up is a one-off, not per-run cost).

Run: ``.venv/bin/python benchmarks/pipeline.py [--rows 1000000 --batches 10]``.
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
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("RUST_BACKTRACE", "0")

import yaml  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402

from flows import pipeline as p  # noqa: E402
from flows.config import load_config  # noqa: E402
from flows.demo_data import write_batches  # noqa: E402
from flows.stages import ingest  # noqa: E402


def _config(root: Path) -> Path:
    base = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("selfheal.yaml").read_text())
    base.update(
        home=str(root / "home"),
        tracking_uri=f"sqlite:///{root / 'home' / 'mlflow.db'}",
        lake={"root": str(root / "lake")},
        landing={"path": str(root / "landing"), "format": "parquet"},
    )
    root.mkdir(parents=True, exist_ok=True)
    path = root / "selfheal.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def plain_run(config: Path) -> dict[str, float]:
    """The same stages, called as plain functions, timed one by one."""
    cfg = load_config(config)
    Path(cfg.home).mkdir(parents=True, exist_ok=True)
    lake = p.open_lake(cfg)
    times: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        times[name] = time.perf_counter() - start
        return out

    files = timed(
        "ingest",
        lambda: [ingest.read_file(s) for s in ingest.list_landing(cfg.landing.path, cfg.landing.format)],
    )
    timed("validate-and-land", p.land_task.fn, cfg, files, 0)
    silver_version = timed("build-features", p.features_task.fn, cfg)
    challenger = timed("train", p.train_task.fn, cfg, silver_version)
    decision = timed("evaluate", p.evaluate_task.fn, cfg, challenger, silver_version)
    assert decision.passed, decision
    timed("promote", p.promote_task.fn, cfg, challenger.version)
    timed("manifest", lambda: lake.write_manifest("plain", {t: lake.version(t) for t in ("bronze", "silver")}))
    return times


def task_durations(flow_run_id: Any) -> dict[str, float]:
    """Seconds each task of the flow run took, summed by task name, from Prefect's API."""
    import asyncio

    async def read() -> dict[str, float]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        out: dict[str, float] = {}
        for run in runs:
            name = run.name.rsplit("-", 1)[0]
            out[name] = out.get(name, 0.0) + run.total_run_time.total_seconds()
        return out

    return asyncio.run(read())


@flow
def warm_up() -> None:
    """Start the ephemeral Prefect server before anything is timed."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in ("prefect", "plain")}
        configs = {name: _config(root) for name, root in roots.items()}
        started = time.perf_counter()
        for root in roots.values():
            write_batches(root / "landing", batches=args.batches, rows=args.rows // args.batches, seed=11)
        print(f"generated {args.rows:,} rows in {args.batches} batches x2 in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        plain = plain_run(configs["plain"])
        plain_total = time.perf_counter() - started

        started = time.perf_counter()
        state = p.pipeline_flow(str(configs["prefect"]), return_state=True)
        flow_total = time.perf_counter() - started
        result = state.result()
        assert result.outcome == "promoted", result.message
        per_task = task_durations(state.state_details.flow_run_id)

    print(f"\n{'stage':<20} {'prefect task s':>15} {'plain s':>10}")
    names = ["ingest", "validate-and-land", "build-features", "train", "evaluate", "promote", "manifest"]
    prefect_names = {"ingest": ["list-landing", "read-landing-file"]}
    for name in names:
        prefect_s = sum(per_task.get(n, 0.0) for n in prefect_names.get(name, [name]))
        shown = f"{prefect_s:15.2f}" if prefect_s else f"{'(in flow)':>15}"
        print(f"{name:<20} {shown} {plain.get(name, 0.0):10.2f}")
    overhead = (flow_total - plain_total) / flow_total
    print(f"\n{'total wall time':<20} {flow_total:15.2f} {plain_total:10.2f}")
    print(f"flow / plain ratio: {flow_total / plain_total:.3f}")
    verdict = "met" if overhead <= 0.10 else "MISSED"
    print(f"Prefect orchestration overhead: {overhead:.1%} of the flow's wall time (target <= 10%: {verdict})")
    print(f"metrics (flow): {result.metrics}")


if __name__ == "__main__":
    main()
