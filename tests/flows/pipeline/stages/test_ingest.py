"""Ingest over real files: list by format, read and digest, skip what bronze or the quarantine took."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from checkpoints import Lake
from checkpoints.quarantine import quarantine
from flows.pipeline.stages.ingest import BRONZE, LandingUnreachable, already_taken, list_landing, read_file


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ["b.csv", "a.csv", "c.parquet", "d.pq", "notes.txt"]:
        (landing / name).write_bytes(name.encode())
    (landing / "sub.csv").mkdir()  # a folder is listed by name: only the suffix decides
    return landing


def test_list_landing_keeps_the_formats_suffixes_in_name_order(tmp_path: Path) -> None:
    landing = _landing(tmp_path)
    csv = [Path(p).name for p in list_landing(str(landing), "csv")]
    parquet = [Path(p).name for p in list_landing(str(landing), "parquet")]
    assert csv == ["a.csv", "b.csv", "sub.csv"]
    assert parquet == ["c.parquet", "d.pq"]


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
