"""``selfheal lake ...``: look at and repair the Delta lake from the command line."""

from __future__ import annotations

import argparse
import json

from checkpoints import CheckpointError, Lake
from flows.config import SelfhealConfig, load_config


def open_lake(cfg: SelfhealConfig) -> Lake:
    """The lake the configuration points at."""
    return Lake(cfg.lake.root, cfg.lake.storage_options or None)


def cli_status(args: argparse.Namespace) -> int:
    cfg = load_config()
    lake = open_lake(cfg)
    print(f"lake: {lake.root}")
    for table in lake.tables():
        try:
            detail = f"version {lake.version(table)}"
        except CheckpointError as exc:
            detail = f"UNREADABLE: {exc}"
        print(f"  {table:<20} {detail}")
    manifest = lake.last_manifest()
    if manifest is None:
        print("last consistent manifest: none yet (no complete pipeline run)")
    else:
        stages = json.dumps(manifest.stages, sort_keys=True)
        print(f"last consistent manifest: run {manifest.run_id} at {manifest.created_at:%Y-%m-%d %H:%M:%S} {stages}")
    return 0


def cli_recover(args: argparse.Namespace) -> int:
    lake = open_lake(load_config())
    version = lake.recover(args.table)
    print(f"{args.table}: corrupted log entry set aside; table reads at version {version}")
    return 0


def cli_maintain(args: argparse.Namespace) -> int:
    lake = open_lake(load_config())
    for table in args.tables or [t for t in lake.tables() if not t.startswith("_")]:
        report = lake.maintain(table, args.keep_manifests)
        print(
            f"{table}: checkpointed; removed {report.files_removed} files; every version >= "
            f"{report.oldest_kept_version} still restorable"
        )
    return 0


def cli_quarantine(args: argparse.Namespace) -> int:
    lake = open_lake(load_config())
    records = lake.quarantined()
    if not records:
        print("no quarantined batches")
    for r in records:
        print(f"{r.quarantined_at:%Y-%m-%d %H:%M:%S}  {r.source}  sha256={r.sha256[:12]}  {r.reason}")
        print(f"    kept at {r.stored_at} ({len(r.failures)} failure records)")
    return 0
