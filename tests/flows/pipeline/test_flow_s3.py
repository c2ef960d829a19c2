"""The pipeline with its lake on a real S3-compatible object store (SeaweedFS): kill -9 mid-stage, then resume."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from checkpoints import Lake
from flows.local.object_store import SeaweedFS
from flows.pipeline.flow import pipeline_flow
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.flows.pipeline.slow_fit import SLOW_TRAINER, kill_9_mid_fit, start_cli

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.integration
def test_kill_9_during_train_on_s3_then_resume_loses_and_duplicates_no_row(
    tmp_path: Path, object_store: SeaweedFS
) -> None:
    frame, target = dataset_frame("binary")
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    lake_s3 = {"root": object_store.new_root("pipeline"), "storage_options": object_store.storage_options}
    for root, lake_cfg in ((crashed, lake_s3), (clean, {"root": str(clean / "lake")})):
        batches = write_batches(frame, root / "landing", parts=3)
        write_config(root, "binary", target, trainer=SLOW_TRAINER, lake=lake_cfg)
    marker = tmp_path / "fitting"
    proc = start_cli(crashed / "selfheal.yaml", "pipeline", "run", marker=marker)
    kill_9_mid_fit(proc, marker)  # SIGKILL while train runs: bronze and silver landed, no manifest

    lake = Lake(lake_s3["root"], object_store.storage_options)
    bronze_v, silver_v = lake.version("bronze"), lake.version("silver")
    assert lake.last_manifest() is None
    os.environ.pop("SELFHEAL_TEST_FIT_MARKER", None)

    resumed = pipeline_flow(str(crashed / "selfheal.yaml"))
    uninterrupted = pipeline_flow(str(clean / "selfheal.yaml"))

    assert resumed.outcome == "promoted", resumed.message
    assert (lake.version("bronze"), lake.version("silver")) == (bronze_v, silver_v)  # nothing re-landed
    assert resumed.landing.accepted == []
    assert resumed.metrics == uninterrupted.metrics
    # Counted with delta-rs alone: every source row once in bronze, and silver equal to the clean run's.
    bronze = DeltaTable(lake.uri("bronze"), storage_options=object_store.storage_options).to_pyarrow_table()
    assert bronze.num_rows == len(frame)
    per_file = Counter(Path(f).name for f in bronze.column("_source_file").to_pylist())
    assert per_file == {p.name: len(pd.read_parquet(p)) for p in batches}
    silver = lake.read("silver").drop_columns(["_ingested_at", "_source_file"])
    assert silver.equals(Lake(clean / "lake").read("silver").drop_columns(["_ingested_at", "_source_file"]))
