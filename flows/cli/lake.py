"""``selfheal lake status | recover | maintain | quarantine``: look at and repair the Delta lake."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from flows.cli.command import Commands, Subparsers, config

if TYPE_CHECKING:
    from checkpoints import Lake
    from flows.config import SelfhealConfig


def register(sub: Subparsers) -> None:
    """Add the ``lake`` group."""
    lake = Commands(sub).group("lake", "inspect and repair the Delta lake", "Lake tools.")
    lake.add("status", cli_status, "list tables, versions and the last consistent manifest")
    rec = lake.add(
        "recover", cli_recover, "set aside a corrupted newest log entry so the table reads at its last good version"
    )
    rec.add_argument("table", help="table name")
    mnt = lake.add(
        "maintain", cli_maintain, "checkpoint and vacuum tables, keeping every version a kept manifest needs"
    )
    mnt.add_argument("tables", nargs="*", help="tables (default: all)")
    mnt.add_argument("--keep-manifests", type=int, default=None, help="newest complete manifests to keep (default all)")
    lake.add("quarantine", cli_quarantine, "list quarantined batches and why")


def open_lake(cfg: SelfhealConfig | None = None) -> Lake:
    """The lake the configuration (default: the command's) points at."""
    from checkpoints import Lake  # imports pyarrow, pandas and deltalake: not on --help

    cfg = cfg or config()
    return Lake(cfg.lake.root, cfg.lake.storage_options or None)


def cli_status(args: argparse.Namespace) -> int:
    """``selfheal lake status``."""
    from checkpoints import CheckpointError  # the package imports the lake (pyarrow, pandas): not on --help

    lake = open_lake()
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
    """``selfheal lake recover TABLE``."""
    version = open_lake().recover(args.table)
    print(f"{args.table}: corrupted log entry set aside; table reads at version {version}")
    return 0


def cli_maintain(args: argparse.Namespace) -> int:
    """``selfheal lake maintain [TABLE ...]``."""
    lake = open_lake()
    for table in args.tables or [t for t in lake.tables() if not t.startswith("_")]:
        report = lake.maintain(table, args.keep_manifests)
        print(
            f"{table}: checkpointed; removed {report.files_removed} files; every version >= "
            f"{report.oldest_kept_version} still restorable"
        )
    return 0


def cli_quarantine(args: argparse.Namespace) -> int:
    """``selfheal lake quarantine``."""
    records = open_lake().quarantined()
    if not records:
        print("no quarantined batches")
    for r in records:
        print(f"{r.quarantined_at:%Y-%m-%d %H:%M:%S}  {r.source}  sha256={r.sha256[:12]}  {r.reason}")
        print(f"    kept at {r.stored_at} ({len(r.failures)} failure records)")
    return 0
