"""Quarantine: refused batches kept whole, once per content, with the reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from checkpoints import Lake
from checkpoints.exceptions import CheckpointNotFound
from checkpoints.quarantine import find, list_quarantined, mark_released, quarantine


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


def test_a_recheck_keeps_the_newest_reason_and_a_release_leaves_the_list_once(lake: Lake) -> None:
    first = quarantine(lake, b"survey", "/landing/s.parquet", "duplicate_fraction<=0.05 failed")
    again = quarantine(lake, b"survey", "/landing/s.parquet", "duplicate_fraction<=0.1 failed")
    assert quarantine(lake, b"survey", "/landing/s.parquet", "duplicate_fraction<=0.1 failed") == again
    (listed,) = lake.quarantined()
    assert listed.reason == "duplicate_fraction<=0.1 failed" and listed.checked_at is not None
    assert listed.quarantined_at == first.quarantined_at  # first refused then: not a new quarantine

    released = mark_released(lake, listed)
    mark_released(lake, listed)  # a second release records nothing
    assert lake.quarantined() == [] and lake.quarantined(released=True) == [released]
    assert lake.read("_quarantine").num_rows == 3
    assert find(lake, first.id[:6]) == released


def test_find_names_an_unknown_or_ambiguous_id(lake: Lake) -> None:
    quarantine(lake, b"one", "/landing/a.csv", "bad")
    with pytest.raises(CheckpointNotFound, match="no quarantined batch with id 'nope'"):
        find(lake, "nope")
    with pytest.raises(CheckpointNotFound, match="no quarantined batch with id ''"):
        find(lake, "")
    digest = hashlib.sha256(b"one").hexdigest()
    twin = next(f"{i}".encode() for i in range(1000) if hashlib.sha256(f"{i}".encode()).hexdigest()[0] == digest[0])
    quarantine(lake, twin, "/landing/b.csv", "bad")
    with pytest.raises(CheckpointNotFound, match=r"2 quarantined batches with id '.';.*\(give more digits\)"):
        find(lake, digest[0])
