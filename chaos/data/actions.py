"""Data faults: a landing batch that arrives corrupt, a stream that drifts; and their undo.

Corruption works on real bytes: a copy of the newest good batch is truncated, replaced
by random bytes, given a changed schema, a share of nulls or a feature column turned
into structs, and lands as the next batch. The landing zone's other faults: a new
batch written in pieces with a pause (read while still being written), rows already
landed re-sent under a new name and encoding, and entries that are not files. Drift
comes from the project's generator, run as a subprocess (``selfheal data generate
--drift covariate:1.5``): new batches land drifted and,
given a stream file, the records the clients send drift too. The files an action
wrote are recorded in the fault ledger, so ``remove_injected_batches`` can undo it.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import _landing, ledger
from chaos.serving._server import run_command

__all__ = [
    "add_non_file_entries",
    "corrupt_batch",
    "inject_drift",
    "land_batch_in_pieces",
    "land_batches",
    "land_renamed_batch",
    "remove_injected_batches",
    "resend_batch",
]

logger = logging.getLogger(__name__)

CORRUPTIONS = ("truncate", "garbage", "schema", "nulls", "nested")
NON_FILE_ENTRIES = ("directory", "symlink", "fifo")
DRIFTS = ("covariate", "concept")
_STREAM_BACKUP = ".chaos-backup"


def _pick_column(table: Any, column: str | None) -> str:

    if column is not None:
        if column not in table.column_names:
            raise ValueError(f"column {column!r} is not in the batch ({', '.join(table.column_names)})")
        return column
    for field in table.schema:
        if pa.types.is_floating(field.type):
            return str(field.name)
    raise ValueError("the batch has no floating-point column to corrupt; name one with `column`")


def _corrupt(raw: bytes, suffix: str, mode: str, column: str | None, fraction: float, seed: int) -> tuple[bytes, str]:

    rng = np.random.default_rng(seed)
    if mode == "truncate":
        return raw[: int(len(raw) * 0.6)], "cut at 60% of its bytes"
    if mode == "garbage":
        return rng.integers(0, 256, size=len(raw), dtype=np.uint8).tobytes(), f"{len(raw)} random bytes"
    table = pacsv.read_csv(io.BytesIO(raw)) if suffix == ".csv" else pq.read_table(io.BytesIO(raw))
    name = _pick_column(table, column)
    index = table.column_names.index(name)
    if mode == "schema":
        table = table.rename_columns([f"{c}_v2" if c == name else c for c in table.column_names])
        detail = f"column {name!r} renamed to {name + '_v2'!r}"
    elif mode == "nested":
        if suffix == ".csv":
            raise ValueError("a nested (struct) column needs a parquet batch; CSV cannot hold one")
        values = table.column(name)
        units = pa.array(["EUR"] * len(values))
        table = table.set_column(
            index, name, pa.StructArray.from_arrays([values.combine_chunks(), units], ["value", "unit"])
        )
        detail = f"column {name!r} turned into a struct {{value, unit}}"
    else:
        values = table.column(name).to_pylist()
        hit = rng.random(len(values)) < fraction
        values = [None if h else v for v, h in zip(values, hit, strict=True)]
        table = table.set_column(
            index, pa.field(name, table.schema.field(name).type), pa.array(values, table.schema.field(name).type)
        )
        detail = f"{int(hit.sum())} of {len(values)} values of {name!r} set to null"
    out = io.BytesIO()
    if suffix == ".csv":
        pacsv.write_csv(table, out)
    else:
        pq.write_table(table, out)
    return out.getvalue(), detail


def corrupt_batch(
    landing_path: str,
    mode: str,
    source_file: str | None = None,
    column: str | None = None,
    fraction: float = 0.3,
    seed: int = 0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Land a corrupted copy of a good batch as the next batch file.

    ``mode``: ``truncate`` (cut at 60% of its bytes), ``garbage`` (random bytes),
    ``schema`` (a column renamed), ``nulls`` (a share ``fraction`` of a column's
    values set to null) or ``nested`` (a column's values turned into structs
    ``{value, unit}``; parquet only). The source is the newest batch in the landing zone unless
    given; the column is the first floating-point one unless given. Returns the new
    file, its digest and what was done.
    """
    if mode not in CORRUPTIONS:
        raise ValueError(f"mode must be one of {', '.join(CORRUPTIONS)}, got {mode!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    files = _landing.batch_files(landing_path)
    source = Path(source_file) if source_file else (files[-1] if files else None)
    if source is None:
        raise ActivityFailed(f"no batch in {landing_path} to corrupt a copy of")
    raw, detail = _corrupt(source.read_bytes(), source.suffix, mode, column, fraction, seed)
    target = Path(landing_path) / f"batch-{_landing.next_index(landing_path):05d}{source.suffix}"
    _landing.write_atomic(target, raw)
    digest = _landing.sha256(target)
    at = ledger.record(
        configuration, "fault", fault="corrupt_batch", detail={"paths": [str(target)], "mode": mode, "sha256": digest}
    )
    logger.info("landed corrupt batch %s (%s: %s)", target.name, mode, detail)
    return {"path": str(target), "mode": mode, "detail": detail, "sha256": digest, "source": str(source), "at": at}


def _generate(
    out: Path,
    start: int,
    batches: int,
    rows: int,
    seed: int,
    drift: str,
    config_path: str | None,
    fmt: str | None = None,
) -> list[Path]:
    argv = ["selfheal", *(["-c", config_path] if config_path else []), "data", "generate"]
    argv += ["--out", str(out), "--start", str(start), "--batches", str(batches), "--rows", str(rows)]
    argv += ["--seed", str(seed), "--drift", drift, *(["--format", fmt] if fmt else [])]
    out_lines = run_command(argv, timeout=300).splitlines()
    return [Path(line.strip()) for line in out_lines if line.strip().endswith(_landing.SUFFIXES)]


def _replace_stream(stream_file: str, start: int, rows: int, seed: int, drift: str, config_path: str | None) -> str:
    """Swap the clients' record file for a freshly generated batch; keep the first original as a backup."""
    stream = Path(stream_file)
    backup = stream.with_name(stream.name + _STREAM_BACKUP)
    with tempfile.TemporaryDirectory(prefix="selfheal-stream-") as tmp:
        made = _generate(Path(tmp), start, 1, rows, seed, drift, config_path)
        if not made:
            raise ActivityFailed("the generator wrote no stream batch")
        if stream.exists() and not backup.exists():
            shutil.copy2(stream, backup)
        _landing.write_atomic(stream, made[0].read_bytes())
    return str(backup)


def land_batches(
    landing_path: str,
    batches: int = 1,
    rows: int = 1000,
    seed: int = 7,
    drift: str = "none",
    config_path: str | None = None,
) -> dict[str, Any]:
    """Land new batches of the seeded demo stream after the newest one (``selfheal data generate``).

    Not a fault by itself: the traffic a pipeline needs before it can be killed mid-run.
    ``drift`` is passed through (``none``, ``covariate:1.5``, ``concept:1``).
    """
    if batches < 1 or rows < 1:
        raise ValueError("batches and rows must be >= 1")
    start = _landing.next_index(landing_path)
    paths = _generate(Path(landing_path), start, batches, rows, seed, drift, config_path)
    return {"paths": [str(p) for p in paths], "start": start}


def inject_drift(
    landing_path: str,
    kind: str,
    magnitude: float = 1.5,
    batches: int = 2,
    rows: int = 1000,
    seed: int = 7,
    stream_file: str | None = None,
    config_path: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Make the stream drift: land new batches with covariate or concept drift of the given magnitude.

    ``kind``: ``covariate`` (a new payment gateway with larger amounts takes a share of
    the rows; labels follow the same rule, whose new-gateway terms the old model never
    saw, so it feels the drift) or ``concept`` (same features, a different
    fraud rule labels them). Given a stream file (the records the clients send), it is
    replaced by a drifted batch too; the original is kept for ``remove_injected_batches``.
    """
    if kind not in DRIFTS:
        raise ValueError(f"kind must be one of {', '.join(DRIFTS)}, got {kind!r}")
    if magnitude <= 0:
        raise ValueError(f"magnitude must be > 0, got {magnitude}")
    spec = f"{kind}:{magnitude:g}"
    landed = land_batches(landing_path, batches, rows, seed, spec, config_path)
    detail: dict[str, Any] = {"paths": landed["paths"], "drift": spec}
    if stream_file:
        start = landed["start"] + batches
        detail["stream_file"] = stream_file
        detail["stream_backup"] = _replace_stream(stream_file, start, rows, seed, spec, config_path)
    at = ledger.record(configuration, "fault", fault="inject_drift", detail=detail)
    logger.info("injected %s drift: %d batches landed%s", spec, batches, ", stream swapped" if stream_file else "")
    return {**detail, "at": at}


def remove_injected_batches(landing_path: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Undo this run's data faults: set aside the batch files (and non-file entries) they landed; restore the stream.

    Each entry is renamed hidden (``.<name>.removed``): the pipeline no longer sees it and
    the next batch gets a new name (a landing file is read once: a path taken before that
    came back with other content would be refused). Files the pipeline already took stay
    in the lake (bronze or quarantine): the lake's history is not rewritten. Needs the
    fault ledger to know what this run wrote.
    """
    folder = Path(landing_path).resolve()
    removed, restored = [], []
    for entry in ledger.current_run(configuration):
        if entry.event != "fault":
            continue
        for name in entry.detail.get("paths", []):
            # The entry itself, never what a symlink points to.
            path = Path(name).parent.resolve() / Path(name).name
            if path.parent != folder or not (path.is_symlink() or path.exists()):
                continue
            _landing.set_aside(path)  # hidden: out of the pipeline's sight, its name never reused
            removed.append(path.name)
        backup = entry.detail.get("stream_backup")
        if backup and Path(backup).exists():
            shutil.move(backup, entry.detail["stream_file"])
            restored.append(entry.detail["stream_file"])
    ledger.record(configuration, "restore", fault="remove_injected_batches", detail={"removed": removed})
    logger.info("removed %d injected batch files, restored %d stream files", len(removed), len(restored))
    return {"removed": removed, "restored": restored}


def land_renamed_batch(
    landing_path: str,
    column: str | None = None,
    new_name: str = "txn_{column}",
    rows: int = 1000,
    seed: int = 7,
    config_path: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Land a new batch of the demo stream with one column renamed (an upstream schema change, same values).

    Unlike ``corrupt_batch(mode="schema")`` (a copy of rows already landed) its rows are
    new, so whether they land, and with which values, can be counted. ``column`` is the
    first floating-point one unless given; ``new_name`` may use ``{column}``. Returns the
    file, its digest, the column and its new name (also in the fault ledger, for
    ``seconds_until_renamed_rows_landed``).
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    start = _landing.next_index(landing_path)
    with tempfile.TemporaryDirectory(prefix="selfheal-renamed-") as tmp:
        made = _generate(Path(tmp), start, 1, rows, seed, "none", config_path)
        if not made:
            raise ActivityFailed("the generator wrote no batch")
        source = made[0]
        table = pacsv.read_csv(str(source)) if source.suffix == ".csv" else pq.read_table(str(source))
    name = _pick_column(table, column)
    renamed = new_name.format(column=name)
    if renamed in table.column_names:
        raise ValueError(f"the batch already has a column {renamed!r}")
    table = table.rename_columns([renamed if c == name else c for c in table.column_names])
    out = io.BytesIO()
    if source.suffix == ".csv":
        pacsv.write_csv(table, out)
    else:
        pq.write_table(table, out)
    target = Path(landing_path) / source.name
    _landing.write_atomic(target, out.getvalue())
    detail = {"paths": [str(target)], "column": name, "renamed_to": renamed, "sha256": _landing.sha256(target)}
    at = ledger.record(configuration, "fault", fault="land_renamed_batch", detail=detail)
    logger.info("landed %s with column %r renamed to %r", target.name, name, renamed)
    return {**detail, "path": str(target), "rows": table.num_rows, "at": at}


def _pieces(raw: bytes, suffix: str, fraction: float) -> tuple[bytes, bytes]:
    """Split a file where a writer's buffer might end; a CSV at a line break (whole rows flushed so far)."""
    cut = max(1, int(len(raw) * fraction))
    if suffix == ".csv":
        cut = raw.rindex(b"\n", 0, cut) + 1
    return raw[:cut], raw[cut:]


def land_batch_in_pieces(
    landing_path: str,
    pause_seconds: float = 8.0,
    fraction: float = 0.5,
    fmt: str = "parquet",
    rows: int = 1000,
    seed: int = 13,
    config_path: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Write a new batch the way a slow uploader does: a first piece, a pause, then the rest.

    A new batch of the demo stream (``fmt`` parquet or csv) is written under its final
    name: ``fraction`` of its bytes (for CSV, whole rows up to there), flushed, then
    nothing for ``pause_seconds`` (longer than the pipeline's schedule tick, so a run
    may read it half written), then the rest. Returns the file, its final digest and
    its row count; the fault time is when the first piece was flushed.
    """
    if not 0.0 < fraction < 1.0 or pause_seconds < 0:
        raise ValueError(f"fraction must be in (0, 1) and pause_seconds >= 0, got {fraction}, {pause_seconds}")
    start = _landing.next_index(landing_path)
    with tempfile.TemporaryDirectory(prefix="selfheal-pieces-") as tmp:
        made = _generate(Path(tmp), start, 1, rows, seed, "none", config_path, fmt)
        if not made:
            raise ActivityFailed("the generator wrote no batch")
        raw = made[0].read_bytes()
        target = Path(landing_path) / made[0].name
    head, tail = _pieces(raw, target.suffix, fraction)
    with open(target, "wb") as fh:
        fh.write(head)
        fh.flush()
        os.fsync(fh.fileno())
        at = ledger.record(
            configuration, "fault", fault="land_batch_in_pieces", detail={"paths": [str(target)], "first": len(head)}
        )
        logger.info("wrote %d of %d bytes of %s; pausing %.1f s", len(head), len(raw), target.name, pause_seconds)
        time.sleep(pause_seconds)
        fh.write(tail)
        fh.flush()
        os.fsync(fh.fileno())
    return {
        "path": str(target),
        "bytes": len(raw),
        "first_piece": len(head),
        "sha256": _landing.sha256(target),
        "at": at,
    }


def resend_batch(
    landing_path: str,
    source_file: str | None = None,
    compression: str = "zstd",
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Re-send rows that already landed: a batch re-encoded (columns reversed, other compression) under the next name.

    The source is the oldest batch in the landing zone unless given (nothing else copies
    it). Same rows, different bytes: a content digest cannot tell it was seen before.
    """
    files = _landing.batch_files(landing_path)
    source = Path(source_file) if source_file else (files[0] if files else None)
    if source is None:
        raise ActivityFailed(f"no batch in {landing_path} to re-send")
    table = pacsv.read_csv(str(source)) if source.suffix == ".csv" else pq.read_table(str(source))
    table = table.select(list(reversed(table.column_names)))
    out = io.BytesIO()
    if source.suffix == ".csv":
        pacsv.write_csv(table, out)
    else:
        pq.write_table(table, out, compression=compression)
    target = Path(landing_path) / f"batch-{_landing.next_index(landing_path):05d}{source.suffix}"
    _landing.write_atomic(target, out.getvalue())
    detail = {"paths": [str(target)], "source": str(source), "rows": table.num_rows, "sha256": _landing.sha256(target)}
    at = ledger.record(configuration, "fault", fault="resend_batch", detail=detail)
    logger.info("re-sent the %d rows of %s as %s", table.num_rows, source.name, target.name)
    return {**detail, "path": str(target), "at": at}


def _make_entry(path: Path, kind: str, target: Path | None) -> None:
    if kind == "directory":
        path.mkdir()
        (path / "part-0.parquet").write_bytes(b"")  # a directory of parts, as Spark writes one
    elif kind == "symlink":
        if target is None:
            raise ActivityFailed("no batch in the landing zone for the symlink to point at")
        path.symlink_to(target.resolve())
    else:
        os.mkfifo(path)  # a reader that opens it blocks until a writer comes: never


def add_non_file_entries(
    landing_path: str, kinds: list[str] | None = None, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Put entries that are not regular files into the landing zone, each named like the next batch.

    ``kinds`` (default all): ``directory`` (holding a part file), ``symlink`` (to the
    newest batch) and ``fifo`` (a named pipe: reading it would block forever).
    """
    kinds = list(kinds or NON_FILE_ENTRIES)
    unknown = [k for k in kinds if k not in NON_FILE_ENTRIES]
    if unknown:
        raise ValueError(f"kinds must be among {', '.join(NON_FILE_ENTRIES)}, got {unknown}")
    files = _landing.batch_files(landing_path)
    first = _landing.next_index(landing_path)
    paths = []
    for offset, kind in enumerate(kinds):
        path = Path(landing_path) / f"batch-{first + offset:05d}.parquet"
        _make_entry(path, kind, files[-1] if files else None)
        paths.append(str(path))
    at = ledger.record(configuration, "fault", fault="add_non_file_entries", detail={"paths": paths, "kinds": kinds})
    logger.info("added non-file entries to the landing zone: %s", ", ".join(Path(p).name for p in paths))
    return {"paths": paths, "kinds": kinds, "at": at}
