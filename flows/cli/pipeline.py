"""``selfheal pipeline run | status``."""

from __future__ import annotations

import argparse
import json

from flows.cli.lake import open_lake
from flows.config import load_config
from flows.registry import Registry


def cli_run(args: argparse.Namespace) -> int:
    from flows.pipeline.flow import pipeline_flow

    result = pipeline_flow()
    print(f"{result.outcome}: {result.message}")
    landing = result.landing
    if landing.accepted or landing.quarantined:
        print(f"  landed {len(landing.accepted)} file(s), {landing.rows} rows")
        for name, reason in landing.quarantined:
            print(f"  quarantined {name}: {reason}")
        for note in landing.notes:
            print(f"  note: {note}")
    return 0


def cli_status(args: argparse.Namespace) -> int:
    cfg = load_config()
    lake = open_lake(cfg)
    manifests = lake.manifests()
    print(f"lake {lake.root}")
    for table in ("bronze", "silver"):
        print(f"  {table}: " + (f"version {lake.version(table)}" if lake.exists(table) else "not created yet"))
    print("last manifests:")
    if not manifests:
        print("  none (no pipeline run has completed)")
    for m in manifests[-5:]:
        outcome = m.meta.get("outcome", "?")
        print(
            f"  {m.created_at:%Y-%m-%d %H:%M:%S}  {outcome:<11} {json.dumps(m.stages, sort_keys=True)}  run {m.run_id}"
        )
    registry = Registry(cfg.tracking_uri, cfg.model_name)
    print(f"model {cfg.model_name} ({cfg.tracking_uri}):")
    for alias, record in registry.aliases().items():
        if record is None:
            print(f"  {alias:<10} -")
            continue
        metrics = {k.removeprefix("metric."): v for k, v in record.tags.items() if k.startswith("metric.")}
        lineage = {k.removeprefix("selfheal."): v for k, v in record.tags.items() if k.startswith("selfheal.")}
        print(f"  {alias:<10} v{record.version}  metrics={metrics}")
        print(f"  {'':<10} lineage={lineage}")
    return 0
