"""Training on small real frames: estimator from config, holdout split, fitted model and metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.utils.validation import check_is_fitted

from flows.config import HoldoutConfig, TrainerConfig
from flows.pipeline.stages.train import build_model, fit, make_estimator, per_batch, recent, split_holdout

SCHEMA = {"x1": "float64", "x2": "float64", "colour": "string", "label": "int64"}


def _silver(n: int = 240, classes: int = 2, seed: int = 0) -> pd.DataFrame:
    """Rows whose label is a function of ``x1`` (learnable), with lineage like the pipeline's."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    edges = np.quantile(x1, np.linspace(0, 1, classes + 1)[1:-1])
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "blue", None], size=n),
            "label": np.digitize(x1, edges).astype("float64"),
            "_sha256": [f"file{i // 60}" for i in range(n)],
            "_row": np.arange(n) % 60,
            "_batch_id": [f"b{i // 60}" for i in range(n)],
            "_ingested_at": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
        }
    )


def test_the_default_estimator_follows_the_task_and_takes_the_seed() -> None:
    classifier = make_estimator(TrainerConfig(seed=7), "binary")
    regressor = make_estimator(TrainerConfig(seed=7), "regression")
    assert isinstance(classifier, HistGradientBoostingClassifier) and classifier.random_state == 7
    assert isinstance(regressor, HistGradientBoostingRegressor) and regressor.random_state == 7


def test_configured_params_win_over_the_seed() -> None:
    trainer = TrainerConfig(
        estimator="sklearn.linear_model.LogisticRegression", params={"C": 0.5, "random_state": 3}, seed=7
    )
    estimator = make_estimator(trainer, "binary")
    assert isinstance(estimator, LogisticRegression)
    assert (estimator.C, estimator.random_state) == (0.5, 3)


def test_an_estimator_path_that_names_no_class_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot import 'sklearn.ensemble.NoSuchThing'"):
        make_estimator(TrainerConfig(estimator="sklearn.ensemble.NoSuchThing"), "binary")


def test_recent_keeps_the_newest_batches_only() -> None:
    silver = _silver()
    assert sorted(recent(silver, 2)["_batch_id"].unique()) == ["b2", "b3"]
    assert len(recent(silver, None)) == len(silver)


def test_the_holdout_of_a_row_does_not_change_when_more_rows_land() -> None:
    trainer = TrainerConfig(seed=5)
    silver = _silver()
    first = split_holdout(silver.iloc[:120], trainer, None)
    later = split_holdout(silver, trainer, None)
    held = set(zip(first.holdout["_sha256"], first.holdout["_row"], strict=True))
    held_later = set(zip(later.holdout["_sha256"], later.holdout["_row"], strict=True))
    assert held and held <= held_later
    assert len(later.train) + len(later.holdout) == len(silver)
    assert 0.1 < len(later.holdout) / len(silver) < 0.3  # fraction 0.2 by hash, not exact


def test_the_time_strategy_holds_out_the_newest_rows() -> None:
    trainer = TrainerConfig(holdout=HoldoutConfig(strategy="time", fraction=0.25))
    silver = _silver().sample(frac=1.0, random_state=1)  # shuffled: the split must sort
    split = split_holdout(silver, trainer, None)
    assert len(split.holdout) == 60
    assert split.holdout["_ingested_at"].min() > split.train["_ingested_at"].max()


def test_without_lineage_the_holdout_is_an_exact_seeded_sample() -> None:
    silver = _silver()[["x1", "x2", "colour", "label"]]
    a = split_holdout(silver, TrainerConfig(seed=1), None)
    b = split_holdout(silver, TrainerConfig(seed=1), None)
    assert len(a.holdout) == 48 and a.holdout.equals(b.holdout)


def test_fit_binary_gives_a_fitted_model_and_classification_metrics() -> None:
    silver = _silver()
    silver.loc[:9, "label"] = np.nan  # unlabeled rows are left out
    trained, split = fit(silver, SCHEMA, "label", "binary", TrainerConfig(seed=3), id_columns=[])
    check_is_fitted(trained.model)
    assert set(trained.metrics) == {"accuracy", "f1_macro", "roc_auc", "average_precision"}
    assert trained.metrics["accuracy"] > 0.8 and trained.metrics["roc_auc"] > 0.85
    assert trained.features == ["x1", "x2", "colour"]
    assert len(split.train) + len(split.holdout) == len(silver) - 10
    assert split.holdout["label"].dtype == "int64"
    assert trained.params["random_state"] == 3


def test_fit_multiclass_and_regression_report_their_own_metrics() -> None:
    multi, _ = fit(_silver(classes=3), SCHEMA, "label", "multiclass", TrainerConfig(), id_columns=[])
    assert set(multi.metrics) == {"accuracy", "f1_macro", "roc_auc"}
    silver = _silver()
    silver["label"] = 3.0 * silver["x1"] + 1.0
    regression, _ = fit(silver, SCHEMA, "label", "regression", TrainerConfig(), id_columns=[])
    assert set(regression.metrics) == {"r2", "rmse", "mae"}
    assert regression.metrics["r2"] > 0.9


def test_fit_refuses_a_frame_without_labels() -> None:
    silver = _silver()
    silver["label"] = np.nan
    with pytest.raises(ValueError, match="no labeled rows"):
        fit(silver, SCHEMA, "label", "binary", TrainerConfig(), id_columns=[])


def test_the_model_carries_its_imputation_and_encoding_for_unseen_inputs() -> None:
    silver = _silver()
    model = build_model(SCHEMA, "label", [], HistGradientBoostingClassifier(random_state=0))
    model.fit(silver[["x1", "x2", "colour"]], silver["label"].astype("int64"))
    unseen = pd.DataFrame({"x1": [np.nan, 2.0], "x2": [0.0, np.nan], "colour": ["green", None]})
    assert model.predict(unseen).shape == (2,)


def test_per_batch_quality_is_the_mean_over_holdout_batches_with_their_spread() -> None:
    rng = np.random.default_rng(5)
    frames = []
    for k, offset in enumerate((-2.0, 0.0, 2.0)):  # three seasons: pooled ranking is easier than within one
        x1 = rng.normal(offset, 1.0, 400)
        frames.append(
            pd.DataFrame({"x1": x1, "label": (x1 + rng.normal(0, 1.0, 400) > 0).astype("int64"), "_batch_id": f"b{k}"})
        )
    holdout = pd.concat(frames, ignore_index=True)
    model = LogisticRegression().fit(holdout[["x1"]], holdout["label"])

    found = per_batch(model, holdout, ["x1"], "label", "binary")
    pooled = roc_auc_score(holdout["label"], model.predict_proba(holdout[["x1"]])[:, 1])
    each = [roc_auc_score(f["label"], model.predict_proba(f[["x1"]])[:, 1]) for f in frames]

    assert found["roc_auc"][0] == pytest.approx(np.mean(each)) and found["roc_auc"][0] < pooled - 0.05
    assert found["roc_auc"][1] == pytest.approx(np.std(each, ddof=1))
    assert per_batch(model, holdout.head(150), ["x1"], "label", "binary") == {}  # fewer than two batches of 100 rows
