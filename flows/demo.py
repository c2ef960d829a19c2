"""``selfheal demo``: the loop on generated card-fraud data, in a scratch folder.

Every number printed is measured in this run: nothing is canned. The demo shows
the parts of the loop that exist today and says plainly which come next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from flows.config import SelfhealConfig, load_config

_NEXT = (
    "Not in this build yet: the model server, the monitor and the healer (detect -> diagnose ->\n"
    "repair -> verify -> MTTR). When they land, this demo injects faults into the running system\n"
    "and prints each recovery time."
)


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


def demo_config(base: SelfhealConfig, workdir: Path) -> Path:
    """Write the demo's config: the user's (or default) settings with every path in ``workdir``."""
    data = base.model_dump(mode="json", by_alias=True, exclude={"source_path"})
    data.update(
        home=str(workdir),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        lake={"root": str(workdir / "lake"), "storage_options": {}},
        landing={**data["landing"], "path": str(workdir / "landing"), "fallback": None},
    )
    data["serving"]["url"] = None
    path = workdir / "selfheal.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_pipeline(config: Path, title: str) -> Any:
    from flows.pipeline import pipeline_flow

    _say(f"\n== {title}")
    started = time.perf_counter()
    result = pipeline_flow(str(config))
    landing = result.landing
    _say(f"   pipeline: {result.outcome} in {time.perf_counter() - started:.1f} s: {result.message}")
    if landing.accepted:
        _say(f"   landed {len(landing.accepted)} file(s), {landing.rows:,} rows into bronze")
    for name, reason in landing.quarantined:
        _say(f"   quarantined {name}: {reason[:140]}")
    for note in landing.notes[:5]:
        _say(f"   note: {note[:140]}")
    return result


def run_demo(workdir: Path, batches: int, rows: int, seed: int) -> dict[str, Any]:
    """Run the demo in ``workdir`` (wiped first) and return what it measured."""
    from checkpoints import Lake
    from flows.demo_data import write_batches
    from flows.registry import Registry

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = demo_config(load_config(), workdir)
    cfg = load_config(config)
    landing = Path(cfg.landing.path)
    fmt = cfg.landing.format

    _say(f"selfheal demo: scratch folder {workdir}")
    _say(f"   writing {batches} clean card-transaction batches ({rows:,} rows each, seed {seed})")
    write_batches(landing, batches=batches, rows=rows, seed=seed, fmt=fmt)
    first = _run_pipeline(config, "1. first data: train, gate, promote the first champion")

    _say("\n   the landing zone now receives three broken batches and two good ones")
    for i, fault in enumerate(("truncated", "missing_column", "wrong_dtype")):
        write_batches(landing, batches=1, rows=rows, seed=seed, fault=fault, fmt=fmt, start=batches + i)
    write_batches(landing, batches=2, rows=rows, seed=seed, fmt=fmt, start=batches + 3)
    second = _run_pipeline(config, "2. bad batches: quarantined with their reasons, the rest lands")

    drift_start = batches + 5
    write_batches(
        landing, batches=2, rows=rows, seed=seed, drift=f"covariate:1.5@{drift_start}", fmt=fmt, start=drift_start
    )
    third = _run_pipeline(config, "3. covariate drift (a new payment gateway): retrain and gate")

    fourth = _run_pipeline(config, "4. run again with nothing new")

    lake = Lake(cfg.lake.root)
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    _say("\n== where things stand")
    for table in ("bronze", "silver"):
        _say(f"   {table:<7} version {lake.version(table)}, {lake.read(table).num_rows:,} rows")
    _say(f"   quarantine: {len(lake.quarantined())} batch(es) kept with their reasons (selfheal lake quarantine)")
    for alias, record in registry.aliases().items():
        metric = record.tags.get(f"metric.{cfg.gate_metric}") if record else None
        _say(f"   {alias:<10} " + (f"v{record.version}  {cfg.gate_metric}={metric}" if record else "-"))
    _say(f"\n{_NEXT}")
    return {"runs": [first, second, third, fourth]}


def cli_demo(args: argparse.Namespace) -> int:
    base = load_config()
    workdir = Path(args.workdir) if args.workdir else Path(base.home) / "demo"
    # The demo's Prefect runs use a local SQLite server under <home>, not ~/.prefect.
    os.environ.setdefault("PREFECT_HOME", str(Path(base.home) / "prefect"))
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    run_demo(workdir.resolve(), args.batches, args.rows, args.seed)
    return 0
