"""Train: estimator from config, seeded holdout, a model pipeline that carries its own
imputation and encoding, metrics for the task.

Pure functions: silver rows in, a fitted pipeline and numbers out. Logging to
MLflow is the pipeline's job (``flows.pipeline.flow``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from flows.config import DEFAULT_ESTIMATORS, TrainerConfig
from flows.monitor.detectors.performance import task_metrics
from flows.pipeline.stages.features import feature_columns


@dataclass(frozen=True)
class Split:
    """Training and holdout rows (holdout is what the gate compares models on)."""

    train: pd.DataFrame
    holdout: pd.DataFrame


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model pipeline and its holdout metrics."""

    model: Pipeline
    metrics: dict[str, float]
    features: list[str]
    params: dict[str, Any]
    per_batch: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Metric -> (mean over the holdout's batches, standard deviation between them): ``per_batch``."""


def make_estimator(trainer: TrainerConfig, task: str) -> BaseEstimator:
    """Instantiate the configured estimator, seeded when it takes ``random_state``.

    Raises:
        ValueError: the import path does not name a class.
    """
    path = trainer.estimator or DEFAULT_ESTIMATORS[task]
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"trainer.estimator: cannot import {path!r}: {exc}") from exc
    params = dict(trainer.params)
    estimator: BaseEstimator = cls(**params)
    if "random_state" in estimator.get_params() and "random_state" not in params:
        estimator.set_params(random_state=trainer.seed)
    return estimator


def build_model(schema: dict[str, str], target: str, id_columns: list[str], estimator: BaseEstimator) -> Pipeline:
    """Imputer + ordinal encoder (fitted on training rows only) in front of the estimator."""
    features = feature_columns(schema, target, id_columns)
    numeric = [c for c in features if schema[c] in ("float64", "int64", "bool")]
    categorical = [c for c in features if schema[c] == "string"]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("num", SimpleImputer(strategy="median", keep_empty_features=True), numeric))
    if categorical:
        encoder = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                ("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)),
            ]
        )
        transformers.append(("cat", encoder, categorical))
    pre = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("prepare", pre), ("estimator", estimator)])


def recent(silver: pd.DataFrame, window_batches: int | None) -> pd.DataFrame:
    """The rows of the newest ``window_batches`` batches (all rows when None)."""
    if not window_batches or "_batch_id" not in silver:
        return silver
    newest = sorted(silver["_batch_id"].unique())[-window_batches:]
    return silver[silver["_batch_id"].isin(newest)].reset_index(drop=True)


def since_change(silver: pd.DataFrame, since_batch: int | None, since_time: datetime | None) -> pd.DataFrame:
    """The rows of the batches from a change point on: ``since_batch`` and later, else the
    batches that landed (``_ingested_at``) at or after ``since_time``.

    Batch ids grow with landing order, so "landed after the change" is the batches from the
    first one that did onward. Empty when no batch is known to follow the change yet.
    """
    if "_batch_id" not in silver:
        return silver.iloc[0:0]
    if since_batch is None and since_time is not None and "_ingested_at" in silver:
        landed = pd.to_datetime(silver["_ingested_at"], utc=True).groupby(silver["_batch_id"]).min()
        after = landed[landed >= pd.Timestamp(since_time)]
        since_batch = int(after.index.min()) if len(after) else None
    if since_batch is None:
        return silver.iloc[0:0]
    return silver[silver["_batch_id"] >= since_batch].reset_index(drop=True)


def batch_range(rows: pd.DataFrame) -> tuple[int, int] | None:
    """The first and last batch id of ``rows`` (None: no rows or no batch ids)."""
    if "_batch_id" not in rows or rows.empty:
        return None
    return int(rows["_batch_id"].min()), int(rows["_batch_id"].max())


def split_holdout(silver: pd.DataFrame, trainer: TrainerConfig, time_column: str | None) -> Split:
    """A stable seeded holdout (by row identity), or the newest rows when the strategy is ``time``."""
    n = len(silver)
    n_holdout = max(1, int(round(n * trainer.holdout.fraction)))
    if trainer.holdout.strategy == "time":
        order_by = time_column if time_column and time_column in silver else "_ingested_at"
        ordered = silver.sort_values([order_by], kind="stable").reset_index(drop=True)
        return Split(ordered.iloc[: n - n_holdout], ordered.iloc[n - n_holdout :])
    if {"_sha256", "_row"} <= set(silver.columns):
        # A row's side is a pure function of (seed, source file, row): a row held out
        # once is held out in every later run, so the champion never trained on the
        # holdout the gate compares it on.
        hashes = pd.util.hash_pandas_object(
            silver[["_sha256", "_row"]], index=False, hash_key=f"selfheal{trainer.seed:08d}"[-16:]
        ).to_numpy()
        mask = (hashes / np.float64(2**64)) < trainer.holdout.fraction
        if mask.all() or not mask.any():
            mask = np.zeros(n, dtype=bool)
            mask[: max(1, n_holdout)] = True
    else:
        rng = np.random.default_rng(trainer.seed)
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=n_holdout, replace=False)] = True
    return Split(silver[~mask].reset_index(drop=True), silver[mask].reset_index(drop=True))


def score(model: Any, holdout: pd.DataFrame, features: list[str], target: str, task: str) -> dict[str, float]:
    """Holdout metrics for the task (all computed; the gate picks one)."""
    x, y = holdout[features], holdout[target].to_numpy()
    predicted = model.predict(x)
    if task == "regression":
        return {
            "r2": float(skm.r2_score(y, predicted)),
            "rmse": float(np.sqrt(skm.mean_squared_error(y, predicted))),
            "mae": float(skm.mean_absolute_error(y, predicted)),
        }
    out = {
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "f1_macro": float(skm.f1_score(y, predicted, average="macro", zero_division=0)),
    }
    if hasattr(model, "predict_proba") and len(np.unique(y)) > 1:
        proba = model.predict_proba(x)
        classes = list(model.classes_)
        if task == "binary" and proba.shape[1] == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
            out["average_precision"] = float(skm.average_precision_score(y, proba[:, 1]))
        elif set(np.unique(y)) <= set(classes):
            out["roc_auc"] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    return out


def fit(
    silver: pd.DataFrame,
    schema: dict[str, str],
    target: str,
    task: str,
    trainer: TrainerConfig,
    id_columns: list[str],
    time_column: str | None = None,
) -> tuple[TrainedModel, Split]:
    """Split, fit on the training rows, score on the holdout."""
    if silver[target].isna().all():
        raise ValueError(f"no labeled rows: target column {target!r} is empty")
    labeled = silver[silver[target].notna()].reset_index(drop=True)
    split = split_holdout(labeled, trainer, time_column)
    features = feature_columns(schema, target, id_columns)
    estimator = make_estimator(trainer, task)
    model = build_model(schema, target, id_columns, estimator)
    y = split.train[target].to_numpy()
    if task != "regression":
        y = y.astype("int64")
    model.fit(split.train[features], y)
    holdout = split.holdout.copy()
    if task != "regression":
        holdout[target] = holdout[target].astype("int64")
    metrics = score(model, holdout, features, target, task)
    params = {k: v for k, v in estimator.get_params().items() if isinstance(v, int | float | str | bool)}
    spread = per_batch(model, holdout, features, target, task)
    return TrainedModel(model, metrics, features, params, spread), Split(split.train, holdout)


#: Holdout rows a batch needs before its own metric counts in the per-batch baseline
#: (as many as the drift calibration's chunks: ``DriftThresholds.calibration_min_rows``).
PER_BATCH_MIN_ROWS = 100


def per_batch(
    model: Any, holdout: pd.DataFrame, features: list[str], target: str, task: str
) -> dict[str, tuple[float, float]]:
    """Each metric as the monitor will meet it: per batch, with its variation between batches.

    The monitor judges one batch (or one window of live traffic) at a time, but the
    holdout pools several batches: when batches differ (seasons, sources), a pooled
    ranking metric such as ROC AUC is higher than any one batch's, because ranking
    across batches is easier than within one. So the champion's quality is also
    measured on each holdout batch: the mean is the baseline a batch is compared
    with, and the standard deviation between batches (their sampling noise included,
    as NannyML derives thresholds from the reference's chunks) widens the monitor's
    tolerance.

    Returns:
        Metric name -> (mean, standard deviation); empty when the holdout has fewer
        than two batches with ``PER_BATCH_MIN_ROWS`` rows (or no ``_batch_id``).
    """
    if "_batch_id" not in holdout.columns:
        return {}
    found: dict[str, list[float]] = {}
    for _, rows in holdout.groupby("_batch_id", sort=True):
        if len(rows) < PER_BATCH_MIN_ROWS:
            continue
        x, y = rows[features], rows[target].to_numpy()
        proba = model.predict_proba(x)[:, 1] if task == "binary" and hasattr(model, "predict_proba") else None
        for name, (value, _) in task_metrics(y, model.predict(x), proba, task).items():  # type: ignore[arg-type]
            if np.isfinite(value):
                found.setdefault(name, []).append(value)
    enough = {name: values for name, values in found.items() if len(values) >= 2}
    return {name: (float(np.mean(values)), float(np.std(values, ddof=1))) for name, values in enough.items()}
