"""Imputation of quarantined batches from last good values, seeded per file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from checkpoints import Lake
from flows.config import load_config
from flows.pipeline.flow import pipeline_flow
from flows.pipeline.imputation import _seed, fill_missing, impute_quarantined
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config


def test_imputation_draws_are_seeded_per_file() -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, np.inf, np.nan, 5.0], "c": ["a", None, "b", "a", None]})
    donors = {"x": np.arange(100.0), "c": np.array(["a", "b", "c"], dtype=object)}
    once, again = (fill_missing(frame, donors, _seed("/q/abc/batch.parquet")) for _ in range(2))
    pd.testing.assert_frame_equal(once, again)  # a retried repair lands the same rows
    assert once.notna().all().all() and np.isfinite(once["x"]).all()
    assert once.loc[[0, 4], "x"].tolist() == [1.0, 5.0]  # present values are kept
    other = fill_missing(frame, donors, _seed("/q/def/batch.parquet"))
    assert not other.equals(once)


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_imputation_cannot_handle_leaves_the_others_repaired_and_ids_land_once(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    frame.insert(0, "row_id", [f"r{i:05d}" for i in range(len(frame))])
    write_batches(frame.iloc[:380], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target, data__id_columns=["row_id"])
    assert pipeline_flow(str(config)).outcome == "promoted"
    lake = Lake(tmp_path / "lake")
    feature = frame.columns[1]
    nested = frame.iloc[:70].copy()
    nested[feature] = [{"value": v} for v in nested[feature]]
    holey = frame.iloc[350:].copy()  # 30 rows already in bronze, 189 new
    holey.loc[holey.index[::2], feature] = np.nan

    def stored(part: pd.DataFrame, name: str) -> str:
        out = io.BytesIO()
        part.to_parquet(out, index=False)
        return lake.quarantine(out.getvalue(), f"landing/{name}", "refused").stored_at

    files = [stored(nested, "batch-00002.parquet"), stored(holey, "batch-00003.parquet")]

    landed = impute_quarantined(load_config(config), lake, files)  # base: TypeError: unhashable type: 'dict'

    assert landed == [files[1]]
    ids = lake.read("bronze", columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(frame)  # base: the 30 resent rows twice
