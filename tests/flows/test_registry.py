"""flows.registry.run_metrics: a run's metrics read without MLflow, as MLflow's own client gives them."""

from __future__ import annotations

import math

import pytest

from flows.registry import ModelNotFound, Registry, run_metrics


def test_run_metrics_match_what_mlflow_reads_back(tracking_uri: str) -> None:
    """Latest value per key (by step, then time), a NaN, an infinity: the same as ``get_run().data.metrics``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.create_experiment("metrics"))
    run_id = run.info.run_id
    client.log_metric(run_id, "roc_auc", 0.71, step=0)
    client.log_metric(run_id, "roc_auc", 0.93, step=2)
    client.log_metric(run_id, "roc_auc", 0.80, step=1)  # an older step logged later does not win
    client.log_metric(run_id, "rmse", math.nan)
    client.log_metric(run_id, "mae", math.inf)
    registry = Registry(tracking_uri, "fraud")
    assert registry.light is not None  # the sqlite:/// store is read without MLflow
    light = run_metrics(registry, run_id)
    expected = dict(client.get_run(run_id).data.metrics)
    assert light.keys() == expected.keys() == {"roc_auc", "rmse", "mae"}
    assert light["roc_auc"] == expected["roc_auc"] == 0.93
    assert math.isnan(light["rmse"]) and math.isnan(expected["rmse"])
    assert light["mae"] == expected["mae"]
    empty = client.create_run(run.info.experiment_id).info.run_id
    assert run_metrics(registry, empty) == {}


def test_a_run_that_does_not_exist_is_not_found(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).create_experiment("metrics")  # the store exists, the run does not
    with pytest.raises(ModelNotFound):
        run_metrics(Registry(tracking_uri, "fraud"), "0" * 32)
