"""Run manifests: recorded once per run and completeness, the last complete one, rollback to it."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from checkpoints import Lake
from checkpoints.manifests import Manifest, last_complete, list_manifests, write_manifest


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "x": [float(i) for i in range(start, start + n)]})


def test_restore_and_rollback_to_manifest(lake: Lake) -> None:
    lake.append("bronze", _table(10), key="f1")
    lake.append("silver", _table(10))
    manifest = lake.write_manifest("run-1", {"bronze": lake.version("bronze"), "silver": lake.version("silver")})
    lake.append("bronze", _table(5, 10), key="f2")
    lake.append("silver", _table(5, 10))
    lake.append("silver", _table(5, 15))
    lake.write_manifest("run-2", {"bronze": 1}, complete=False)
    assert lake.last_manifest() == manifest
    new_versions = lake.rollback_to(manifest)
    assert lake.read("bronze").num_rows == 10 and lake.read("silver").num_rows == 10
    assert new_versions == {"bronze": 2, "silver": 3}
    # The rolled-back versions are still there to time-travel to.
    assert lake.read("silver", version=2).num_rows == 20
    assert lake.restore("bronze", 1) == 3 and lake.read("bronze").num_rows == 15


def test_a_run_is_recorded_once_per_completeness_and_keeps_its_meta(lake: Lake) -> None:
    assert list_manifests(lake) == [] and last_complete(lake) is None
    started = write_manifest(lake, Manifest("run-1", {"bronze": 0}, complete=False, meta={"why": "started"}))
    write_manifest(lake, Manifest("run-1", {"bronze": 0}, complete=False))  # a retry: not recorded again
    assert last_complete(lake) is None  # an incomplete run is no checkpoint
    done = write_manifest(
        lake, Manifest("run-1", {"bronze": 1, "silver": 0}, meta={"rows": 10, "at": datetime.now(UTC)})
    )
    manifests = list_manifests(lake)
    assert [(m.run_id, m.complete) for m in manifests] == [("run-1", False), ("run-1", True)]
    assert manifests[0].meta == started.meta == {"why": "started"}
    assert manifests[1].stages == {"bronze": 1, "silver": 0} and manifests[1].meta["rows"] == 10
    assert isinstance(manifests[1].meta["at"], str)  # non-JSON values are kept as text
    assert last_complete(lake) == Manifest.from_row(done.to_row()) == manifests[1]
