"""``selfheal pipeline run | status``: the checkpointed training pipeline."""

from __future__ import annotations

import argparse
import json

from flows.cli.command import Commands, Subparsers, config
from flows.cli.lake import open_lake


def register(sub: Subparsers) -> None:
    """Add the ``pipeline`` group (its commands run flows in this process)."""
    pipeline = Commands(sub, runs_flows=True).group(
        "pipeline", "run or inspect the training pipeline", "The checkpointed training pipeline."
    )
    pipeline.add(
        "run",
        cli_run,
        "ingest new landing files, validate, build features, train, gate and promote",
        "Run the pipeline once as a Prefect flow over the files that landed since the last run.\n"
        "A refused gate or a failing stage rolls back to the last consistent manifest; a run\n"
        "killed mid-way is finished by the next one without redoing completed stages.",
    )
    pipeline.add(
        "status",
        cli_status,
        "show the last manifests, table versions and champion/challenger/previous with metrics and lineage",
    )


def cli_run(args: argparse.Namespace) -> int:
    """``selfheal pipeline run``: one pipeline flow run over the new landing files."""
    from flows.pipeline.flow import pipeline_flow  # imports Prefect, MLflow and sklearn: not on --help

    result = pipeline_flow()
    print(f"{result.outcome}: {result.message}")
    landing = result.landing
    if landing.accepted or landing.quarantined:
        print(f"  landed {len(landing.accepted)} file(s), {landing.rows} rows")
        for name, reason in landing.quarantined:
            print(f"  quarantined {name}: {reason}")
        for note in landing.notes:
            print(f"  note: {note}")
    if result.monitored is not None:
        print(f"  {result.monitored.summary()}")
    return 0


def cli_status(args: argparse.Namespace) -> int:
    """``selfheal pipeline status``: the lake's last manifests, then the model's aliases."""
    from flows.registry import Registry  # imports MLflow: not on --help

    cfg = config()
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
