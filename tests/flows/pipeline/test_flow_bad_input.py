"""Bad landing input never stops the pipeline and never lands a row twice (issue 15).

Real Prefect harness, real Delta lake, real MLflow sqlite store; files written the
way the faults happen (pieces, re-encodings, non-file entries), then ``pipeline_flow``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from checkpoints import Lake
from flows.pipeline.flow import pipeline_flow
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

ID = "row_id"
#: An hour ago: a file this old has settled (no timing in the test itself).
SETTLED = 3600.0


def _frame() -> tuple[pd.DataFrame, str]:
    frame, target = dataset_frame("binary")
    frame.insert(0, ID, [f"r{i:05d}" for i in range(len(frame))])
    return frame, target


def _age(path: Path, seconds: float) -> None:
    """Set the file's modification time ``seconds`` in the past."""
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def _bronze_ids(lake_root: Path) -> list[str]:
    """Bronze's row ids, counted with deltalake itself (not through our Lake)."""
    return [str(v) for v in DeltaTable(str(lake_root / "bronze")).to_pyarrow_table(columns=[ID]).column(ID).to_pylist()]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def test_a_struct_column_quarantines_its_file_and_later_batches_land(tmp_path: Path) -> None:
    frame, target = _frame()
    paths = write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    # Duplicates looked for (not kept, the default without id columns): hashing the dicts raises inside validation.
    expectations = {"min_rows": 10, "max_duplicate_fraction": 0.2, "duplicates": "quarantine"}
    config = write_config(tmp_path, "binary", target, data={"target": target, "expectations": expectations})
    assert pipeline_flow(str(config)).outcome == "promoted"
    nested = frame.iloc[380:475].copy()
    feature = nested.columns[1]
    nested[feature] = [{"value": v, "unit": "mm"} for v in nested[feature]]
    nested.to_parquet(tmp_path / "landing" / "batch-00002.parquet", index=False)
    write_batches(frame.iloc[475:], tmp_path / "landing", parts=1, start=3)

    result = pipeline_flow(str(config))  # base: TypeError: unhashable type: 'dict'; every later run too

    assert result.outcome in ("promoted", "rejected"), result.message
    assert [name for name, _ in result.landing.quarantined] == ["batch-00002.parquet"]
    assert "TypeError" in result.landing.quarantined[0][1]
    assert result.landing.accepted == ["batch-00003.parquet"]
    lake = Lake(tmp_path / "lake")
    (record,) = lake.quarantined()
    assert "unhashable" in record.reason and record.source.endswith("batch-00002.parquet")
    assert sorted(_bronze_ids(tmp_path / "lake")) == sorted([*frame[ID].iloc[:380], *frame[ID].iloc[475:]])
    silver = lake.read("silver", columns=["_sha256"]).column("_sha256").to_pylist()
    assert len(set(silver)) == len(paths) + 1  # the good batch after the bad one reached silver too


def test_a_csv_still_being_written_is_taken_once_complete(tmp_path: Path) -> None:
    frame, target = _frame()
    landing = tmp_path / "landing"
    landing.mkdir()
    first, second = frame.iloc[:300], frame.iloc[300:]
    (landing / "batch-00000.csv").write_bytes(_csv(first))
    _age(landing / "batch-00000.csv", SETTLED)
    growing = landing / "batch-00001.csv"
    growing.write_bytes(_csv(second.iloc[:120]))  # a writer that flushed whole rows so far
    config = write_config(tmp_path, "binary", target, landing={"path": str(landing), "format": "csv"})

    early = pipeline_flow(str(config))

    assert early.landing.accepted == ["batch-00000.csv"] and not early.landing.quarantined
    with growing.open("ab") as fh:
        fh.write(_csv(second.iloc[120:]).split(b"\n", 1)[1])  # the rest, without a second header
    _age(growing, SETTLED)
    late = pipeline_flow(str(config))
    assert late.landing.accepted == ["batch-00001.csv"]
    assert sorted(_bronze_ids(tmp_path / "lake")) == sorted(frame[ID])  # base: 120 rows twice


def test_a_file_that_changes_after_it_was_taken_is_refused_not_ingested_again(tmp_path: Path) -> None:
    frame, target = _frame()
    landing = tmp_path / "landing"
    landing.mkdir()
    growing = landing / "batch-00000.csv"
    growing.write_bytes(_csv(frame.iloc[:200]))
    config = write_config(
        tmp_path, "binary", target, landing={"path": str(landing), "format": "csv", "settle_seconds": 0}
    )
    assert pipeline_flow(str(config)).landing.accepted == ["batch-00000.csv"]
    with growing.open("ab") as fh:  # the writer was not done (it paused longer than settle_seconds)
        fh.write(_csv(frame.iloc[200:400]).split(b"\n", 1)[1])

    again = pipeline_flow(str(config))

    assert not again.landing.accepted
    assert [name for name, _ in again.landing.quarantined] == ["batch-00000.csv"]
    assert "changed after it was taken" in again.landing.quarantined[0][1]
    assert sorted(_bronze_ids(tmp_path / "lake")) == sorted(frame[ID].iloc[:200])  # base: 200 rows twice


def test_a_parquet_file_without_its_footer_yet_is_left_for_a_later_run(tmp_path: Path) -> None:
    frame, target = _frame()
    landing = tmp_path / "landing"
    write_batches(frame.iloc[:300], landing, parts=1)
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame.iloc[300:], preserve_index=False), out)
    whole = out.getvalue()
    partial = landing / "batch-00001.parquet"
    partial.write_bytes(whole[: len(whole) // 2])  # first piece flushed, footer not yet written
    config = write_config(tmp_path, "binary", target, landing={"path": str(landing), "format": "parquet"})

    early = pipeline_flow(str(config))

    assert early.landing.accepted == ["batch-00000.parquet"]
    assert not early.landing.quarantined  # base: quarantined as a truncated parquet file
    with partial.open("ab") as fh:
        fh.write(whole[len(whole) // 2 :])
    late = pipeline_flow(str(config))
    assert late.landing.accepted == ["batch-00001.parquet"] and not Lake(tmp_path / "lake").quarantined()
    assert sorted(_bronze_ids(tmp_path / "lake")) == sorted(frame[ID])


def test_rows_resent_under_a_new_name_and_encoding_are_not_landed_again(tmp_path: Path) -> None:
    frame, target = _frame()
    landing = tmp_path / "landing"
    write_batches(frame.iloc[:400], landing, parts=2)
    config = write_config(tmp_path, "binary", target, data__id_columns=[ID])
    assert pipeline_flow(str(config)).outcome == "promoted"
    resent = pa.Table.from_pandas(frame.iloc[:200][list(reversed(frame.columns))], preserve_index=False)
    pq.write_table(resent, landing / "batch-00002.parquet", compression="zstd")  # same rows, other bytes
    mixed = pa.Table.from_pandas(frame.iloc[350:], preserve_index=False)  # 50 rows already landed, 169 new
    pq.write_table(mixed, landing / "batch-00003.parquet", compression="gzip")

    result = pipeline_flow(str(config))

    assert result.landing.accepted == ["batch-00002.parquet", "batch-00003.parquet"]
    assert result.landing.resent == {"batch-00002.parquet": 200, "batch-00003.parquet": 50}
    ids = _bronze_ids(tmp_path / "lake")
    assert len(ids) == len(set(ids)) == len(frame)  # base: 250 rows twice
    manifest = Lake(tmp_path / "lake").last_manifest()
    assert manifest is not None and manifest.meta["landing"]["resent_rows"] == result.landing.resent
    assert pipeline_flow(str(config)).landing.accepted == []  # the all-resent file counts as taken


def test_non_file_entries_are_skipped_and_never_read_through(tmp_path: Path) -> None:
    frame, target = _frame()
    landing = tmp_path / "landing"
    paths = write_batches(frame, landing, parts=2)
    (landing / "batch-00002.parquet").mkdir()  # a directory named like a batch
    outside = tmp_path / "outside.parquet"
    frame.iloc[:100].to_parquet(outside, index=False)
    (landing / "batch-00003.parquet").symlink_to(outside)
    os.mkfifo(landing / "batch-00004.parquet")  # reading it would block forever
    config = write_config(tmp_path, "binary", target)

    result = pipeline_flow(str(config))  # base: every run fails: "cannot read ...batch-00002.parquet"

    assert result.outcome == "promoted", result.message
    assert result.landing.accepted == [p.name for p in paths] and not result.landing.quarantined
    assert sorted(_bronze_ids(tmp_path / "lake")) == sorted(frame[ID])
