"""Quarantine: refused batches kept whole, once per content, with the reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

from checkpoints import Lake
from checkpoints.quarantine import list_quarantined, quarantine


def test_quarantine_keeps_raw_bytes_once(lake: Lake) -> None:
    first = lake.quarantine(b"\x00garbage", "/landing/b1.parquet", "not parquet", [{"check": "readable"}])
    lake.quarantine(b"\x00garbage", "/landing/b1.parquet", "not parquet")
    records = lake.quarantined()
    assert len(records) == 1 and records[0].reason == "not parquet"
    assert records[0].failures == [{"check": "readable"}]
    assert Path(first.stored_at).read_bytes() == b"\x00garbage"


def test_same_name_other_content_is_kept_apart_and_listed_oldest_first(lake: Lake) -> None:
    assert list_quarantined(lake) == []
    first = quarantine(lake, b"one", "s3://bucket/landing/batch.csv", "bad header")
    second = quarantine(lake, b"two", "C:\\landing\\batch.csv", "too few rows")
    assert first.stored_at != second.stored_at
    assert Path(second.stored_at).name == "batch.csv"  # the file name survives either separator
    records = list_quarantined(lake)
    assert [r.sha256 for r in records] == [hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest()]
    assert [(r.reason, r.size_bytes, r.failures) for r in records] == [("bad header", 3, []), ("too few rows", 3, [])]
