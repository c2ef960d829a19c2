"""The pipeline end to end: real Prefect harness, real Delta, real MLflow sqlite store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from checkpoints import Lake
from flows.config import load_config
from flows.pipeline.flow import pipeline_flow
from flows.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
from tests.flows.pipeline.fixtures import dataset_frame, write_batches, write_config
from tests.flows.pipeline.slow_fit import SLOW_TRAINER, kill_9_mid_fit, start_cli

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _registry(config: Path) -> Registry:
    cfg = load_config(config)
    return Registry(cfg.tracking_uri, cfg.model_name)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_unseen_datasets_described_only_by_config(tmp_path: Path, task: str) -> None:
    frame, target = dataset_frame(task)
    write_batches(frame, tmp_path / "landing", parts=3)
    config = write_config(tmp_path, task, target)
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())

    result = pipeline_flow(str(config))

    assert result.outcome == "promoted", result.message
    # The run's store was this project's only for the run: a later caller in this process is not sent there.
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == uris
    lake = Lake(tmp_path / "lake")
    assert lake.read("bronze").num_rows == len(frame)
    assert lake.read("silver").num_rows == len(frame)
    champion = _registry(config).by_alias(CHAMPION)
    assert champion is not None and champion.version == result.champion
    assert champion.tags["selfheal.silver_version"] == str(result.silver_version)
    assert champion.tags["selfheal.config_hash"] == load_config(config).config_hash
    metric = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "r2"}[task]
    assert float(champion.tags[f"metric.{metric}"]) == pytest.approx(result.metrics[metric], abs=1e-6)
    assert result.metrics[metric] > (0.9 if task != "regression" else 0.2)

    # Nothing new: the second run does nothing and says so.
    again = pipeline_flow(str(config))
    assert again.outcome == "up-to-date" and "no new data" in again.message
    assert lake.version("bronze") == result.bronze_version and lake.version("silver") == result.silver_version


def test_gate_rejection_leaves_champion_silver_and_registry(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:400], tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target)
    first = pipeline_flow(str(config))
    assert first.outcome == "promoted"
    lake = Lake(tmp_path / "lake")
    silver_rows = lake.read("silver").num_rows
    registry = _registry(config)
    versions_before = {mv.version for mv in registry.client.search_model_versions(f"name='{registry.model_name}'")}

    # A much worse estimator on new data: the gate must refuse it.
    write_batches(frame.iloc[400:], tmp_path / "landing", parts=1, start=2)
    config = write_config(
        tmp_path, "binary", target, trainer={"estimator": "sklearn.dummy.DummyClassifier", "params": {}, "seed": 3}
    )
    rejected = pipeline_flow(str(config))

    assert rejected.outcome == "rejected"
    assert "roc_auc=0.5000" in rejected.message and "champion scores" in rejected.message
    champion = registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == first.champion
    assert registry.by_alias(CHALLENGER) is None
    after = {mv.version for mv in registry.client.search_model_versions(f"name='{registry.model_name}'")}
    assert after == versions_before
    assert lake.read("silver").num_rows == silver_rows  # silver as it was
    assert lake.read("bronze").num_rows == len(frame)  # bronze keeps the valid data
    manifest = lake.last_manifest()
    assert manifest is not None and manifest.meta["outcome"] == "rejected"
    # The refused run's reason is kept on its MLflow run.
    runs = registry.client.search_runs(
        [registry.client.get_experiment_by_name("test-binary").experiment_id], "tags.`selfheal.gate` LIKE 'rejected%'"
    )
    assert len(runs) == 1
    # Re-running with no new data does nothing and says so.
    assert pipeline_flow(str(config)).outcome == "nothing-new"


def test_failing_stage_leaves_every_table_at_last_manifest(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    write_batches(frame.iloc[:300], tmp_path / "landing", parts=1)
    config = write_config(tmp_path, "binary", target)
    assert pipeline_flow(str(config)).outcome == "promoted"
    lake = Lake(tmp_path / "lake")
    manifest = lake.last_manifest()
    assert manifest is not None
    bronze_rows, silver_rows = lake.read("bronze").num_rows, lake.read("silver").num_rows

    write_batches(frame.iloc[300:], tmp_path / "landing", parts=1, start=1)
    broken = write_config(
        tmp_path,
        "binary",
        target,
        trainer={"estimator": "tests.flows.pipeline._estimators.BrokenClassifier", "params": {}, "seed": 3},
    )
    with pytest.raises(RuntimeError, match="training blew up"):
        pipeline_flow(str(broken))

    assert lake.read("bronze").num_rows == bronze_rows
    assert lake.read("silver").num_rows == silver_rows
    assert lake.last_manifest() == manifest
    assert _registry(broken).by_alias(CHAMPION) is not None
    # The new file was rolled back, not lost: a healthy run takes it.
    healthy = write_config(tmp_path, "binary", target)
    result = pipeline_flow(str(healthy))
    assert result.outcome == "promoted" and result.landing.accepted == ["batch-00001.parquet"]
    assert lake.read("bronze").num_rows == len(frame)


def test_corrupt_batch_quarantined_while_the_rest_lands(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    paths = write_batches(frame, tmp_path / "landing", parts=3)
    paths[1].write_bytes(paths[1].read_bytes()[:500])  # truncated parquet
    # No footer: taken once it has not changed for landing.settle_seconds (an hour ago here).
    stamp = paths[1].stat().st_mtime - 3600
    os.utime(paths[1], (stamp, stamp))
    config = write_config(tmp_path, "binary", target)

    result = pipeline_flow(str(config))

    assert result.outcome == "promoted"
    assert [name for name, _ in result.landing.quarantined] == ["batch-00001.parquet"]
    lake = Lake(tmp_path / "lake")
    quarantined = lake.quarantined()
    assert len(quarantined) == 1 and Path(quarantined[0].stored_at).read_bytes() == paths[1].read_bytes()
    sizes = [len(frame.iloc[i * 190 : (i + 1) * 190]) for i in (0, 2)]
    assert lake.read("bronze").num_rows == sum(sizes)
    # Seen once, never again: the next run neither re-ingests nor re-quarantines.
    assert pipeline_flow(str(config)).outcome == "up-to-date"
    assert len(lake.quarantined()) == 1


def test_fallback_source_when_primary_landing_is_unreachable(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    write_batches(frame, tmp_path / "fallback", parts=2)
    config = write_config(
        tmp_path,
        "binary",
        target,
        landing={"path": str(tmp_path / "gone"), "format": "parquet", "fallback": str(tmp_path / "fallback")},
    )
    result = pipeline_flow(str(config))
    assert result.outcome == "promoted" and len(result.landing.accepted) == 2


@pytest.mark.integration
def test_kill_9_during_train_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    frame, target = dataset_frame("binary")
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    for root in (crashed, clean):
        write_batches(frame, root / "landing", parts=3)
        write_config(root, "binary", target, trainer=SLOW_TRAINER)
    marker = tmp_path / "fitting"
    proc = start_cli(crashed / "selfheal.yaml", "pipeline", "run", marker=marker)
    kill_9_mid_fit(proc, marker)

    lake = Lake(crashed / "lake")
    bronze_v, silver_v = lake.version("bronze"), lake.version("silver")
    assert lake.last_manifest() is None  # the crash left no manifest
    os.environ.pop("SELFHEAL_TEST_FIT_MARKER", None)

    resumed = pipeline_flow(str(crashed / "selfheal.yaml"))
    uninterrupted = pipeline_flow(str(clean / "selfheal.yaml"))

    assert resumed.outcome == "promoted", resumed.message
    assert (lake.version("bronze"), lake.version("silver")) == (bronze_v, silver_v)
    assert resumed.landing.accepted == []  # nothing re-ingested
    assert resumed.metrics == uninterrupted.metrics
    clean_lake = Lake(clean / "lake")
    assert (
        lake.read("silver")
        .drop_columns(["_ingested_at", "_source_file"])
        .equals(clean_lake.read("silver").drop_columns(["_ingested_at", "_source_file"]))
    )


@pytest.mark.integration
def test_kill_9_after_train_resume_reuses_the_trained_model(tmp_path: Path) -> None:
    """A model trained before the crash is promoted by the next run, not refitted."""
    frame, target = dataset_frame("binary")
    write_batches(frame, tmp_path / "landing", parts=2)
    config = write_config(tmp_path, "binary", target)
    # Simulate the crash window between train and promote: run the train stage alone.
    cfg = load_config(config)
    from prefect import flow
    from prefect.transactions import transaction

    from flows.pipeline.flow import features_task, land_task, read_new_files_task, train_task

    @flow
    def partial() -> str:
        with transaction():
            files = read_new_files_task(cfg, [str(p) for p in sorted((tmp_path / "landing").glob("*.parquet"))])
            land_task(cfg, files, 0)
            silver_v = features_task(cfg)
            assert silver_v is not None
            return train_task(cfg, silver_v).version  # no evaluate, promote or manifest

    trained_version = partial()
    registry = _registry(config)
    assert registry.by_alias(CHALLENGER) is not None and registry.by_alias(CHAMPION) is None

    result = pipeline_flow(str(config))

    assert result.resumed and result.champion == trained_version
    assert registry.by_alias(PREVIOUS) is None
