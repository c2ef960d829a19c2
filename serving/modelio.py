"""How models are written to and read from the MLflow registry: one format for all.

MLflow 3 saves scikit-learn models with skops, which refuses to load types it
has not been told to trust. Tree models need a few; we list the exact types we
reviewed (never "everything skops reports") and let config add more.

Loading never goes through MLflow's own loader: it trusts the list of types the
model's MLmodel file names (anyone who can register a version can name any type)
and unpickles the pickle and cloudpickle formats, i.e. runs the artifact's code.
``load_sklearn_model`` reads only the skops format and only with *our* reviewed
list; anything else is ``UnsafeArtifact``. And every process selfheal starts has
MLflow's own deserialization switched off (``serving.settings.forbid_pickle``), so a stray
``mlflow.sklearn.load_model`` refuses too.

Example:
    >>> info = log_sklearn_model(pipeline, X.head(5), registered_model_name="fraud-detector")
    >>> model = load_sklearn_model("/tmp/x/model")       # a downloaded version (see ``load_version``)
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from checkpoints.exceptions import SelfhealError

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from serving.registry import ModelRegistry, ModelVersionRef


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


@contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``tracking_uri`` for a block, then put them back.

    Some MLflow calls (``start_run``, ``log_model``, ``get_model_info``) take no client and
    use these; left set, they would send a later caller in the same process to this store.
    """
    import mlflow  # why local: the serving path never imports MLflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def log_sklearn_model(
    model: Any,
    input_example: Any,
    *,
    registered_model_name: str | None = None,
    name: str = "model",
    extra_trusted: Iterable[str] = (),
    nullable: Iterable[str] = (),
) -> ModelInfo:
    """Log a fitted scikit-learn model (pipeline) inside the active MLflow run.

    The signature is inferred from ``input_example`` and the model's predictions.
    MLflow marks a column optional only when the example holds a null; ``nullable``
    names the columns that take null whatever the example (the model imputes them),
    so the server accepts the records the model was trained on.
    """
    # Why local: MLflow takes seconds to import, and only training logs models (the server never does).
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    signature = infer_signature(input_example, model.predict(input_example))
    optional = set(nullable)
    if optional and signature.inputs is not None and signature.inputs.has_input_names():
        signature.inputs = Schema(
            [
                ColSpec(spec.type, spec.name, required=spec.required and spec.name not in optional)
                if isinstance(spec, ColSpec)
                else spec
                for spec in signature.inputs.inputs
            ]
        )
    with _without_serving_input_warning():
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


@contextmanager
def _without_serving_input_warning() -> Iterator[None]:
    """Drop MLflow's "Failed to validate serving input example ... Got error" warning for a block.

    ``log_model`` checks the input example by loading the logged model through MLflow's own
    loader, which refuses: every selfheal process forbids MLflow's deserialization
    (``forbid_pickle``). The warning (a JSON fragment and advice to load the model with
    ``env_manager="uv"``) printed on every training run and repair, and read like a failure;
    the model is fine, and the server loads it with ``load_sklearn_model``. Other MLflow
    warnings still print.
    """
    mlflow_logger = logging.getLogger("mlflow.models.model")

    def dropped(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to validate serving input example")

    mlflow_logger.addFilter(dropped)
    try:
        yield
    finally:
        mlflow_logger.removeFilter(dropped)


def pip_requirements() -> list[str]:
    """The packages a logged model needs, pinned to the versions that trained it."""
    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


class UnsafeArtifact(SelfhealError):
    """A model artifact selfheal will not load (its code would run, or a type nobody reviewed would be built).

    Attributes:
        reason: ``outside_root`` (not in the registry's artifact store), ``not_skops``
            (pickle, cloudpickle or an unknown format), ``untrusted_types`` (skops, with a
            type outside the reviewed list).
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def read_mlmodel(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``MLmodel`` file of a local MLflow model folder, as data (no MLflow import: plain YAML)."""
    meta = yaml.safe_load((Path(path) / "MLmodel").read_text()) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}/MLmodel is not a mapping")
    return meta


def load_input_example(path: str | os.PathLike[str], meta: dict[str, Any]) -> Any:
    """The logged input example as a DataFrame (what MLflow's ``Model.load_input_example`` gives), or None.

    Only the ``dataframe`` example MLflow writes for a scikit-learn model logged from a DataFrame
    (``pandas_orient: split`` or ``records``) is read; any other kind is None (no warm-up example).
    """
    import pandas as pd  # why local: the server imports pandas anyway, but modelio's callers need not

    info = meta.get("saved_input_example_info") or {}
    if info.get("type") != "dataframe" or not info.get("artifact_path"):
        return None
    file = Path(path) / str(info["artifact_path"])
    if file.resolve().parent != Path(path).resolve():
        raise UnsafeArtifact("not_skops", f"the input example {file} is not inside the model folder")
    data = json.loads(file.read_text())
    if info.get("pandas_orient", "split") == "split":
        return pd.DataFrame(data["data"], columns=data["columns"], index=data.get("index"))
    return pd.DataFrame.from_records(data)


def load_sklearn_model(path: str | os.PathLike[str], extra_trusted: Iterable[str] = ()) -> Any:
    """Load a scikit-learn model saved by ``log_sklearn_model`` from a local MLflow model folder.

    Only the skops format is read, and only with the reviewed trusted types plus
    ``extra_trusted`` (config), never with the list the artifact itself carries.

    Raises:
        UnsafeArtifact: the artifact is not skops, or holds a type outside the trusted list.
        OSError: the folder or its files cannot be read.
    """
    return load_sklearn_artifact(path, extra_trusted)[0]


def load_sklearn_artifact(path: str | os.PathLike[str], extra_trusted: Iterable[str] = ()) -> tuple[Any, list[str]]:
    """``load_sklearn_model``, and the artifact's types that only the reviewed list (with ``extra_trusted``) trusts.

    Those types are what a start from the version's compiled form checks against its own
    list (``serving.model``): it loads nothing through skops, so that is the check it keeps.
    """
    import skops.io  # why local: skops imports all of scikit-learn

    file = _skops_file(path)
    found = skops.io.get_untrusted_types(file=file)
    trusted = _checked_trust(found, extra_trusted)
    return skops.io.load(file, trusted=trusted), sorted(set(found) & set(trusted_types(extra_trusted)))


def _skops_file(path: str | os.PathLike[str]) -> Path:
    """The skops file of a local MLflow model folder (``UnsafeArtifact``: another format, or outside the folder)."""
    folder = Path(path)
    meta = read_mlmodel(folder)
    flavor = (meta.get("flavors") or {}).get("sklearn") or {}
    fmt = flavor.get("serialization_format", "pickle")
    if fmt != "skops":
        raise UnsafeArtifact("not_skops", f"the model is saved as {fmt!r}; only 'skops' is loaded (pickle runs code)")
    file = folder / str(flavor.get("pickled_model", "model.skops"))
    if file.resolve().parent != folder.resolve():
        raise UnsafeArtifact("not_skops", f"the model file {file} is not inside the model folder")
    return file


def loads_sklearn_model(data: bytes, extra_trusted: Iterable[str] = ()) -> Any:
    """``load_sklearn_model`` for skops bytes (``skops.io.dumps``): the same reviewed types only.

    Raises:
        UnsafeArtifact: the bytes hold a type outside the trusted list.
    """
    import skops.io  # why local: skops imports all of scikit-learn

    trusted = _checked_trust(skops.io.get_untrusted_types(data=data), extra_trusted)
    return skops.io.loads(data, trusted=trusted)


def _checked_trust(found: Iterable[str], extra_trusted: Iterable[str]) -> list[str]:
    """The trusted list, once every type skops ``found`` is on it; else ``UnsafeArtifact``.

    A public scikit-learn estimator is on it too: skops trusts those by default, and reports
    them here only when it was imported by ``import_skops_lean`` (its default list left empty).
    """
    trusted = trusted_types(extra_trusted)
    rest = set(found) - set(trusted)
    estimators = sorted(name for name in rest if public_sklearn_estimator(name))
    untrusted = sorted(rest - set(estimators))
    if untrusted:
        raise UnsafeArtifact("untrusted_types", f"types nobody reviewed: {', '.join(untrusted)}")
    return trusted + estimators


#: Module names ``sklearn.utils.all_estimators`` does not look in.
_NOT_SEARCHED = frozenset({"tests", "externals", "setup", "conftest", "experimental", "estimator_checks"})


def public_sklearn_estimator(type_name: str) -> bool:
    """Whether ``type_name`` is on skops' default trusted list of scikit-learn estimators.

    That list is ``sklearn.utils.all_estimators()``: every concrete ``BaseEstimator`` subclass
    with a public name that a public scikit-learn module (no ``._`` in its name) exposes. This
    asks the same of one type, importing only its own module and that module's public parent
    (``sklearn.ensemble`` for ``sklearn.ensemble._forest``), where scikit-learn exposes its
    estimators. Nothing outside ``sklearn.`` is imported.
    """
    module_name, _, class_name = type_name.rpartition(".")
    parts = module_name.split(".")
    if parts[0] != "sklearn" or class_name.startswith("_") or _NOT_SEARCHED.intersection(parts):
        return False
    public = ".".join(itertools.takewhile(lambda part: not part.startswith("_"), parts))
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
        exposed = getattr(importlib.import_module(public), class_name, None)
    except ImportError:
        return False
    from sklearn.base import BaseEstimator  # why local: only a server loading a model pays for scikit-learn

    return (
        isinstance(cls, type)
        and issubclass(cls, BaseEstimator)
        and cls is not BaseEstimator
        and not inspect.isabstract(cls)
        and exposed is cls
    )


def import_skops_lean() -> None:
    """Import ``skops.io`` without its import-time walk of all of scikit-learn (~0.5 s of a server's cold start).

    At import skops builds its default trusted list from ``sklearn.utils.all_estimators()``,
    which imports every scikit-learn module. Imported here, that list is empty, and
    ``_checked_trust`` accepts the same estimators one artifact at a time
    (``public_sklearn_estimator``): nothing is trusted that skops would not have trusted, and
    only the modules a model's types live in are imported. Only the model server imports
    skops this way (before anything else in its process can); where skops is already
    imported this does nothing.
    """
    if "skops.io" in sys.modules:
        return
    import sklearn.utils  # why local: only a server loading a model pays for scikit-learn

    walk = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = lambda type_filter=None: []  # what skops.io._trusted_types calls at import
    try:
        importlib.import_module("skops.io")
    finally:
        sklearn.utils.all_estimators = walk


def load_version(registry: ModelRegistry, ref: ModelVersionRef, extra_trusted: Iterable[str] = ()) -> Any:
    """Download ``ref`` through ``registry`` (which refuses artifacts outside its root) and load it.

    Raises:
        ModelRefused: outside the artifact root, not skops, or an untrusted type.
        ModelLoadFailed: the artifacts cannot be downloaded or read.
    """
    from serving.registry import ModelLoadFailed, ModelRefused  # why local: registry imports nothing of modelio

    with tempfile.TemporaryDirectory(prefix=f"selfheal-model-{ref.version}-") as folder:
        path = registry.download(ref, into=folder)
        try:
            return load_sklearn_model(path, extra_trusted)
        except UnsafeArtifact as exc:
            raise ModelRefused(ref.name, ref.version, exc.reason, str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadFailed(ref.name, ref.version, f"{type(exc).__name__}: {exc}") from exc
