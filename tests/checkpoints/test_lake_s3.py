"""The lake on a real S3-compatible object store (SeaweedFS, started by ``flows/local/object_store.py``).

Exactly-once there rests on one mechanism: delta-rs commits version N by writing
``_delta_log/N.json`` with a conditional PUT (``If-None-Match: *``, storage option
``aws_conditional_put: etag``), so of two writers committing against the same snapshot
the store lets exactly one create the entry; ``Lake.append_once`` re-checks the key's
``txn`` on a fresh snapshot after losing. No lock, no shared filesystem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from checkpoints import CheckpointCorrupted, Lake, LakeUnreachable
from flows.local.object_store import SeaweedFS
from tests._together import run_together
from tests.checkpoints._writer import overlapping_keys


def _rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "ts": [datetime.now(UTC)] * n})


def test_every_lake_operation_on_s3(s3_lake: Lake, object_store: SeaweedFS) -> None:
    lake = s3_lake
    assert lake.tables() == [] and not lake.exists("bronze")
    v0 = lake.append("bronze", _rows(3), key="a")
    assert lake.append("bronze", _rows(3), key="a") == v0  # duplicate: nothing written
    v1 = lake.append("bronze", _rows(2, 3), key="b")
    lake.append("silver", _rows(1))
    assert lake.tables() == ["bronze", "silver"]
    assert lake.read("bronze").num_rows == 5 and lake.has_key("bronze", "b") and lake.has_rows("bronze")
    assert lake.read("bronze", version=v0).num_rows == 3
    assert lake.read("bronze", version=v1, ordered=True, columns=["id"]).column("id").to_pylist() == list(range(5))
    assert lake.scan("bronze", pc.field("id") >= 3).num_rows == 2  # type: ignore[union-attr]
    since = datetime.now(UTC) - timedelta(hours=1)
    assert lake.window("bronze", "ts", since, datetime.now(UTC) + timedelta(minutes=1)).num_rows == 5  # type: ignore[union-attr]
    assert lake.last_commit("bronze") is not None and list(lake.iter_versions("bronze")) == [0, 1]
    manifest = lake.write_manifest("run-1", {"bronze": v0})
    assert lake.last_manifest() == manifest
    assert lake.rollback_to(manifest)["bronze"] > v1 and lake.read("bronze").num_rows == 3
    assert not lake.has_key("bronze", "b")  # the restore released the key whose rows it removed
    record = lake.quarantine(b"raw,bytes\n", "landing/bad.csv", "too few rows")
    assert record.stored_at.startswith(lake.root + "/") and lake.storage.read_bytes(record.stored_at) == b"raw,bytes\n"
    assert lake.is_quarantined(record.sha256) and [r.sha256 for r in lake.quarantined()] == [record.sha256]
    assert lake.maintain("bronze").table == "bronze"
    assert lake.read("bronze").num_rows == 3


def test_torn_newest_entry_on_s3_is_detected_and_set_aside(s3_lake: Lake, object_store: SeaweedFS) -> None:
    lake = s3_lake
    lake.append("bronze", _rows(3))
    lake.append("bronze", _rows(2, 3))
    fs = object_store.filesystem()
    # A crashed writer cannot tear a PUT, but a bad copy or a tool can leave a garbled entry.
    fs.pipe(lake.storage.join("bronze", "_delta_log", f"{2:020d}.json"), b'{"commitInfo": ')
    with pytest.raises(CheckpointCorrupted):
        lake.read("bronze")
    assert lake.recover("bronze") == 1 and lake.read("bronze").num_rows == 5
    assert fs.exists(lake.storage.join("bronze", "_delta_log", "_corrupted", f"{2:020d}.json"))


def test_delta_rs_alone_writes_a_duplicate_txn_twice(s3_lake: Lake) -> None:
    """The trap ``Lake.append`` exists for: delta-rs records a ``txn`` but never skips a repeated one."""
    uri, options = s3_lake.uri("naive"), s3_lake.storage_options
    for _ in range(2):
        write_deltalake(
            uri,
            _rows(1),
            mode="append",
            storage_options=options,
            commit_properties=CommitProperties(app_transactions=[Transaction("k", 1)]),
        )
    dt = DeltaTable(uri, storage_options=options)
    assert dt.transaction_version("k") == 1 and dt.to_pyarrow_table().num_rows == 2


def test_a_commit_against_a_stale_snapshot_is_refused_by_the_store(s3_lake: Lake) -> None:
    """The conditional PUT itself: version 1 exists, so a second writer's version 1 must fail."""
    uri, options = s3_lake.uri("t"), s3_lake.storage_options
    write_deltalake(uri, _rows(1), storage_options=options)
    stale = DeltaTable(uri, storage_options=options)
    write_deltalake(DeltaTable(uri, storage_options=options), _rows(1), mode="append")
    with pytest.raises(Exception, match="[Cc]ommit"):
        write_deltalake(stale, _rows(1), mode="append", commit_properties=CommitProperties(max_commit_retries=0))
    assert DeltaTable(uri, storage_options=options).to_pyarrow_table().num_rows == 2


@pytest.mark.integration
def test_three_writer_processes_fifty_overlapping_keys_each_land_every_key_once(
    s3_lake: Lake, object_store: SeaweedFS
) -> None:
    env = {"SELFHEAL_TEST_STORAGE_OPTIONS": json.dumps(object_store.storage_options)}
    start_at = time.time() + 5  # every writer is imported and connected before the first append
    argvs = [["overlapping", s3_lake.root, str(w), str(start_at)] for w in range(3)]
    outputs = run_together("tests.checkpoints._writer", argvs, env)
    assert [code for code, _, _ in outputs] == [0, 0, 0], [err[-2000:] for _, _, err in outputs]
    results = [json.loads(line) for _, out, _ in outputs for line in out.splitlines()]
    offered = Counter(key for w in range(3) for key in overlapping_keys(w))
    assert len(results) == 150 and len(offered) == 65 and set(offered.values()) == {2, 3}
    # Each key was written by exactly one of the writers that offered it; the others saw a duplicate.
    written = Counter(r["key"] for r in results if not r["duplicate"])
    assert written == Counter(dict.fromkeys(offered, 1))

    # Counted independently: delta-rs alone, a fresh table object, no Lake.
    dt = DeltaTable(s3_lake.uri("events"), storage_options=object_store.storage_options)
    rows = dt.to_pyarrow_table()
    per_key = Counter(rows.column("key").to_pylist())
    assert rows.num_rows == 65 * 5 and per_key == Counter(dict.fromkeys(offered, 5))
    for key in offered:
        assert dt.transaction_version(f"selfheal:{key}") == 1
    commits = [c for c in dt.history() if c.get("operation") == "WRITE"]
    assert len(commits) == 65


def test_a_lake_named_by_its_root_alone_follows_the_environments_endpoint(
    s3_lake: Lake, dead_s3_options: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store from the AWS_* variables (as the chaos probes open the sandbox's lake), read again after they change.

    fsspec keeps one filesystem per set of keywords: on the old code the second lake reused
    the first one's filesystem, on the first endpoint, and listed its tables.
    """
    s3_lake.append("bronze", _rows(3))
    for name, value in (s3_lake.storage_options or {}).items():
        if name.isupper():
            monkeypatch.setenv(name, value)
    assert Lake(s3_lake.root).tables() == ["bronze"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_s3_options["AWS_ENDPOINT_URL"])
    with pytest.raises(LakeUnreachable, match=f"listing {s3_lake.root}"):
        Lake(s3_lake.root).tables()


def test_an_unreachable_store_is_an_error_naming_the_operation(dead_s3_options: dict[str, str]) -> None:
    """Nothing listens at the endpoint: each call says which lake call failed, not a bare botocore/OSError."""
    lake = Lake("s3://lake/nowhere", dead_s3_options)
    with pytest.raises(LakeUnreachable, match="listing s3://lake/nowhere"):
        lake.tables()
    with pytest.raises(LakeUnreachable, match=r"read\('bronze'\) failed on the object store"):
        lake.read("bronze")
    with pytest.raises(LakeUnreachable, match="checking s3://lake/nowhere/bronze/_delta_log"):
        lake.append("bronze", _rows(1), key="k")


def test_a_cached_snapshot_sees_another_process_append_and_a_replaced_entry(
    s3_lake: Lake, object_store: SeaweedFS
) -> None:
    """The open-table cache (``checkpoints.snapshots``) on S3: new entries are read, a replaced one by its ETag."""
    lake = s3_lake
    lake.append("t", pa.table({"x": [0]}))
    assert lake.read("t").num_rows == 1  # now cached in this thread
    env = {**os.environ, "SELFHEAL_TEST_STORAGE_OPTIONS": json.dumps(object_store.storage_options)}
    subprocess.run(
        [sys.executable, "-m", "tests.checkpoints._writer", "append", lake.root, "7", "t"], env=env, check=True
    )
    assert sorted(lake.read("t").column("x").to_pylist()) == [0, 7]
    # Entry 1 set aside and a different commit written at version 1 by another process: same
    # version number, so only the entry's ETag tells the cached table it is not the log it read.
    fs = object_store.filesystem()
    fs.rm(lake.storage.join("t", "_delta_log", f"{1:020d}.json"))
    subprocess.run(
        [sys.executable, "-m", "tests.checkpoints._writer", "append", lake.root, "8", "t"], env=env, check=True
    )
    assert sorted(lake.read("t").column("x").to_pylist()) == [0, 8]
