"""``selfheal pipeline run | status``: the checkpointed training pipeline."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from flows.cli.command import Commands, Subparsers, config
from flows.cli.lake import open_lake

if TYPE_CHECKING:
    from flows.registry import Registry


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
    from serving.processes import yield_cpu

    yield_cpu()  # batch work: the model server on the same machine goes first (before the imports below)
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
        landing = m.meta.get("landing")
        if landing:
            print(f"  {'':<19}  {_landing_line(landing)}")
    totals = _dropped_totals([m.meta.get("landing") or {} for m in manifests])
    print("rows dropped from accepted batches (all runs): " + (_counts(totals) if totals else "none"))
    _print_aliases(Registry(cfg.tracking_uri, cfg.model_name), cfg.model_name, cfg.tracking_uri)
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {cause}" for cause, n in sorted(counts.items()))


def _dropped_totals(landings: list[dict[str, Any]]) -> dict[str, int]:
    """Rows validation dropped (by cause) and rows not landed again by id (``resent``), summed."""
    totals: dict[str, int] = {}
    for landing in landings:
        for causes in (landing.get("dropped_rows") or {}).values():
            for cause, n in causes.items():
                totals[cause] = totals.get(cause, 0) + int(n)
        resent = sum(int(n) for n in (landing.get("resent_rows") or {}).values())
        if resent:
            totals["resent (id already in bronze)"] = totals.get("resent (id already in bronze)", 0) + resent
    return totals


def _landing_line(landing: dict[str, Any]) -> str:
    """One manifest's landing: files landed and quarantined, rows dropped by cause."""
    dropped = _dropped_totals([landing])
    return (
        f"landed {len(landing.get('accepted') or [])} file(s), quarantined {len(landing.get('quarantined') or [])}; "
        f"rows dropped: {_counts(dropped) if dropped else 'none'}"
    )


def _print_aliases(registry: Registry, model_name: str, tracking_uri: str) -> None:
    print(f"model {model_name} ({tracking_uri}):")
    for alias, record in registry.aliases().items():
        if record is None:
            print(f"  {alias:<10} -")
            continue
        metrics = {k.removeprefix("metric."): v for k, v in record.tags.items() if k.startswith("metric.")}
        lineage = {k.removeprefix("selfheal."): v for k, v in record.tags.items() if k.startswith("selfheal.")}
        print(f"  {alias:<10} v{record.version}  metrics={metrics}")
        print(f"  {'':<10} lineage={lineage}")
