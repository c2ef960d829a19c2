"""How models are written to and read from the MLflow registry: one format for all.

MLflow 3 saves scikit-learn models with skops, which refuses to load types it
has not been told to trust. Tree models need a few; we list the exact types we
reviewed (never "everything skops reports") and let config add more.

Example:
    >>> info = log_sklearn_model(pipeline, X.head(5), registered_model_name="fraud-detector")
    >>> model = load_sklearn_model("models:/fraud-detector@champion")
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

#: Types our own trainers produce that skops does not trust by default.
TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
    "sklearn.tree._tree.Tree",
    "collections.OrderedDict",
)


def trusted_types(extra: Iterable[str] = ()) -> list[str]:
    """The reviewed trusted types plus ``extra`` (from config)."""
    return sorted({*TRUSTED_TYPES, *extra})


def log_sklearn_model(
    model: Any,
    input_example: Any,
    *,
    registered_model_name: str | None = None,
    name: str = "model",
    extra_trusted: Iterable[str] = (),
) -> ModelInfo:
    """Log a fitted scikit-learn model (pipeline) inside the active MLflow run.

    The signature is inferred from ``input_example`` and the model's predictions.
    """
    signature = infer_signature(input_example, model.predict(input_example))
    info: ModelInfo = mlflow.sklearn.log_model(
        model,
        name=name,
        # Named here: otherwise MLflow infers them by re-importing the model in a
        # subprocess, several seconds on every training run (and every repair).
        pip_requirements=pip_requirements(),
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name,
        skops_trusted_types=trusted_types(extra_trusted),
    )
    return info


def pip_requirements() -> list[str]:
    """The packages a logged model needs, pinned to the versions that trained it."""
    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


def load_sklearn_model(model_uri: str) -> Any:
    """Load a scikit-learn model saved by ``log_sklearn_model``.

    The trusted types were recorded in the model's MLmodel file when it was logged.
    """
    return mlflow.sklearn.load_model(model_uri)
