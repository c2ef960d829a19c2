"""Ingest over real files: list by format, read and digest, skip what bronze or the quarantine took."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from checkpoints import Lake
from checkpoints.quarantine import quarantine
from flows.pipeline.stages.ingest import (
    BRONZE,
    LandingFile,
    LandingUnreachable,
    already_taken,
    changed_after_taken,
    landed_ids,
    list_landing,
    parquet_footer_valid,
    read_file,
    read_if_complete,
    row_ids,
    taken_sources,
)


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ["b.csv", "a.csv", "c.parquet", "d.pq", "notes.txt"]:
        (landing / name).write_bytes(name.encode())
    return landing


def test_list_landing_keeps_the_formats_suffixes_in_name_order(tmp_path: Path) -> None:
    landing = _landing(tmp_path)
    csv = [Path(p).name for p in list_landing(str(landing), "csv")]
    parquet = [Path(p).name for p in list_landing(str(landing), "parquet")]
    assert csv == ["a.csv", "b.csv"]
    assert parquet == ["c.parquet", "d.pq"]


def test_list_landing_skips_what_is_not_a_regular_file_and_hidden_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    landing = _landing(tmp_path)
    (landing / "sub.csv").mkdir()
    (landing / "link.csv").symlink_to(landing / "a.csv")
    os.mkfifo(landing / "pipe.csv")
    (landing / ".e.csv").write_bytes(b"being written")
    (landing / "_f.csv").write_bytes(b"being written")
    with caplog.at_level(logging.WARNING, logger="flows.pipeline.stages.ingest"):
        listed = [Path(p).name for p in list_landing(str(landing), "csv")]
    assert listed == ["a.csv", "b.csv"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for said in ("sub.csv is a directory", "link.csv is a symlink", "pipe.csv is a special file"):
        assert said in warned


def _parquet(rows: int = 50) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(rows))}), out)
    return out.getvalue()


def test_parquet_footer_valid_only_for_a_whole_file() -> None:
    whole = _parquet()
    assert parquet_footer_valid(whole)
    assert not parquet_footer_valid(whole[: len(whole) // 2])
    assert not parquet_footer_valid(whole[:-8] + b"PAR1")  # magic at the end but no footer that parses
    assert not parquet_footer_valid(b"")


def _aged(path: Path, raw: bytes, seconds: float) -> str:
    path.write_bytes(raw)
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))
    return str(path)


def test_read_if_complete_parquet_by_footer_anything_by_settle_time(tmp_path: Path) -> None:
    whole = _parquet()
    fresh_whole = _aged(tmp_path / "a.parquet", whole, 0)
    fresh_half = _aged(tmp_path / "b.parquet", whole[:100], 0)
    settled_half = _aged(tmp_path / "c.parquet", whole[:100], 3600)
    fresh_csv = _aged(tmp_path / "d.csv", b"x\n1\n", 0)
    settled_csv = _aged(tmp_path / "e.csv", b"x\n1\n", 3600)
    taken = {
        s: read_if_complete(s, "csv" if s.endswith(".csv") else "parquet", 60)
        for s in (fresh_whole, fresh_half, settled_half, fresh_csv, settled_csv)
    }
    assert {Path(s).name for s, f in taken.items() if f is not None} == {"a.parquet", "c.parquet", "e.csv"}
    assert read_if_complete(fresh_csv, "csv", 0) is not None  # settle 0: taken as soon as seen


def test_row_ids_join_several_id_columns_and_landed_ids_reads_bronze(tmp_path: Path) -> None:
    table = pa.table({"a": ["x", "y"], "b": [1, 2], "v": [0.1, 0.2]})
    assert row_ids(table, ["a"]) == ["x", "y"]
    assert row_ids(table.to_pandas(), ["a", "b"]) == ["x\x1f1", "y\x1f2"]
    lake = Lake(tmp_path / "lake")
    assert landed_ids(lake, ["a"]) == set()
    lake.append(BRONZE, table, key="k")
    assert landed_ids(lake, ["a", "b"]) == {"x\x1f1", "y\x1f2"}
    assert landed_ids(lake, []) == set()


def test_a_path_taken_before_with_other_content_changed_after_it_was_taken(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.append(BRONZE, pa.table({"_source_file": ["land/a.csv"], "_sha256": ["1" * 64]}), key="1" * 64)
    quarantine(lake, b"bad", "land/b.csv", "bad header")
    taken = taken_sources(lake)
    assert taken["land/a.csv"] == {"1" * 64} and "land/b.csv" in taken
    again = LandingFile("land/a.csv", "2" * 64, b"x")
    assert "a.csv: changed after it was taken" in changed_after_taken(again, taken)
    assert changed_after_taken(LandingFile("land/a.csv", "1" * 64, b"x"), taken) == ""
    assert changed_after_taken(LandingFile("land/c.csv", "3" * 64, b"x"), taken) == ""


def test_a_uri_keeps_its_protocol(tmp_path: Path) -> None:
    landing = _landing(tmp_path)
    listed = list_landing(f"file://{landing}", "csv")
    assert listed[0] == f"file://{landing}/a.csv"
    assert read_file(listed[0]).raw == b"a.csv"


def test_a_missing_landing_zone_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(LandingUnreachable, match="does not exist or is not a folder"):
        list_landing(str(tmp_path / "nowhere"), "csv")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(LandingUnreachable):
        list_landing(str(tmp_path / "file.csv"), "csv")


def test_read_file_reads_whole_and_digests_the_content(tmp_path: Path) -> None:
    raw = b"id,x\n1,2.5\n" * 1000
    (tmp_path / "batch.csv").write_bytes(raw)
    file = read_file(str(tmp_path / "batch.csv"))
    assert file.raw == raw
    assert file.sha256 == hashlib.sha256(raw).hexdigest()
    assert file.name == "batch.csv"
    with pytest.raises(LandingUnreachable, match="cannot read"):
        read_file(str(tmp_path / "gone.csv"))


def test_same_content_under_another_name_has_the_same_digest(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_bytes(b"a,b\n1,2\n")
    (tmp_path / "two.csv").write_bytes(b"a,b\n1,2\n")
    (tmp_path / "three.csv").write_bytes(b"a,b\n1,3\n")
    one, two, three = (read_file(str(tmp_path / f"{n}.csv")) for n in ("one", "two", "three"))
    assert one.sha256 == two.sha256 != three.sha256


def test_already_taken_by_bronze_or_the_quarantine(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    landed, refused, fresh = b"landed", b"refused", b"fresh"
    digest = {raw: hashlib.sha256(raw).hexdigest() for raw in (landed, refused, fresh)}
    assert not already_taken(lake, digest[landed])  # no table yet
    lake.append(BRONZE, pa.table({"x": [1]}), key=digest[landed])
    quarantine(lake, refused, "landing/refused.csv", "bad header")
    assert already_taken(lake, digest[landed])
    assert already_taken(lake, digest[refused])
    assert not already_taken(lake, digest[fresh])
