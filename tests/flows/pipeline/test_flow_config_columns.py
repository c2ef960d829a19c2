"""The config's target, time and id columns are checked against the batches read into an empty lake (issue 15).

A column no batch has is a config mistake: the run fails with a ``ConfigError`` naming the
key (the CLI exits 2), nothing is quarantined or landed. One batch without it is that
batch's fault: it is quarantined and the others land. Real Prefect harness, real lake.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from checkpoints import Lake
from flows.config import ConfigError
from flows.pipeline.flow import pipeline_flow
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data__target": "is_fraud"},
            "data.target: column 'is_fraud' not in any of the 2 readable batch.es.; the first, batch-00001",
        ),
        ({"data__time_column": "event_time"}, "data.time_column: column 'event_time' not in any of the 2"),
        ({"data__id_columns": ["transaction_id"]}, "data.id_columns: column 'transaction_id' not in any of"),
    ],
)
def test_a_configured_column_no_batch_has_fails_the_run_as_a_config_error(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    frame, target = dataset_frame("binary")
    landing = tmp_path / "landing"
    landing.mkdir()
    garbage = landing / "batch-00000.parquet"
    garbage.write_bytes(b"not parquet at all")  # unreadable, so quarantined and not the batch checked
    os.utime(garbage, (garbage.stat().st_mtime - 3600,) * 2)  # settled: taken, not left for a later run
    write_batches(frame, landing, parts=2, start=1)
    config = write_config(tmp_path, "binary", target, **overrides)

    with pytest.raises(ConfigError, match=message):  # base: every batch quarantined, run "nothing-new"
        pipeline_flow(str(config))

    lake = Lake(tmp_path / "lake")
    assert not lake.exists("_quarantine") or not lake.quarantined()
    assert not lake.exists("bronze") or lake.read("bronze").num_rows == 0
