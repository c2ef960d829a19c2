"""Checkpoint and vacuum without breaking a kept manifest."""

from __future__ import annotations

import pyarrow as pa

from checkpoints import Lake


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "x": [float(i) for i in range(start, start + n)]})


def test_maintain_keeps_every_version_a_kept_manifest_needs(lake: Lake) -> None:
    lake.append("silver", _table(4))
    lake.write_manifest("run-1", {"silver": 0})
    lake.overwrite("silver", _table(2, 50))
    lake.overwrite("silver", _table(3, 70))
    report = lake.maintain("silver")
    assert report.oldest_kept_version == 0
    assert lake.read("silver", version=0).num_rows == 4
    # Without any kept manifest the superseded files may go.
    report = lake.maintain("silver", keep_manifests=0)
    assert report.files_removed == 2
    assert lake.read("silver").num_rows == 3
