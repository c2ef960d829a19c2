"""``selfheal lake status | recover | maintain | quarantine [list | release]``: look at and repair the Delta lake."""

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
    quarantine = lake.add(
        "quarantine",
        cli_quarantine,
        "list quarantined batches and why; release them once the config is fixed",
        "Without a command: list the quarantined batches (as `quarantine list`).",
    )
    below = lake.below(quarantine, "quarantine commands", required=False)
    below.add("list", cli_quarantine, "list quarantined batches: id, source, reason, where the bytes are kept")
    rel = below.add(
        "release",
        cli_release,
        "re-validate quarantined batches with the current config; land those that pass",
        _RELEASE_HELP,
    )
    rel.add_argument("ids", nargs="*", metavar="ID", help="batch id from `quarantine list` (a prefix of its sha256)")
    rel.add_argument("--all", action="store_true", dest="release_all", help="every batch still quarantined")
    rel.set_defaults(release_parser=rel)


_RELEASE_HELP = """\
Re-validate quarantined batches with the CURRENT config (selfheal.yaml as it is now)
and land those that pass in bronze, through the pipeline's own landing stage, exactly
once: releasing a batch twice, or again after a crash, never lands a row twice. A batch
that still fails stays quarantined with the new reason. The next `selfheal pipeline run`
builds features from the released batches and trains on them.

Prints what happened to each batch. Exits 0 when every batch was re-checked (whether
it landed or not); 1 with an error, landing nothing, when an ID matches no quarantined
batch (or several: give more digits).

  selfheal lake quarantine list
  selfheal lake quarantine release 3f2a9c01be77
  selfheal lake quarantine release --all
"""


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
    """``selfheal lake quarantine [list]``."""
    records = open_lake().quarantined()
    if not records:
        print("no quarantined batches")
    for r in records:
        print(f"{r.quarantined_at:%Y-%m-%d %H:%M:%S}  id {r.id}  {r.source}  {r.reason}")
        checked = f"; re-checked {r.checked_at:%Y-%m-%d %H:%M:%S}" if r.checked_at else ""
        print(f"    kept at {r.stored_at} ({len(r.failures)} failure records{checked})")
    return 0


def cli_release(args: argparse.Namespace) -> int:
    """``selfheal lake quarantine release ID... | --all``."""
    from flows.pipeline.quarantine import release_quarantined  # imports the pipeline (Prefect, MLflow)

    if bool(args.ids) == args.release_all:
        args.release_parser.error("give the ids of the batches to release, or --all (not both)")  # exits 2
    results = release_quarantined(config(), None if args.release_all else list(args.ids))
    if not results:
        print("no quarantined batches to release")
    for r in results:
        print(f"{r.record.id}  {r.record.source}: {r.outcome}: {r.detail}")
        for note in r.notes:
            print(f"    note: {note}")
    released = [r for r in results if r.outcome == "landed"]
    if released:
        rows = sum(r.rows for r in released)
        print(f"landed {len(released)} batch(es), {rows} row(s); `selfheal pipeline run` trains on them")
    return 0
