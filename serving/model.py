"""A loaded model version ready to predict, and the trivial baseline behind it.

Predictions call the raw scikit-learn model (not MLflow's pyfunc wrapper): one
DataFrame per micro-batch and, for classifiers, one ``predict_proba`` from which
the label (argmax) and the score come, so each batch is one model call. A request's
rows go through the pipeline's preprocessing compiled to numpy (``serving.compiled``)
once it was found to give exactly scikit-learn's matrix on probe rows at load;
a table's (``predict_frame``) always through scikit-learn's. A version whose compiled
form the model cache kept starts from that without scikit-learn, which it loads later.

Example:
    >>> model = LoadedModel.load(registry, ref, ModelThreads(per_call=1, pool=2))
    >>> result = model.predict(columns)          # columns from FeatureSchema.validate
    >>> result = model.predict_frame(checked.frame)   # a table's valid rows (FeatureSchema.validate_table)
    >>> result.labels, result.values, result.scores
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from serving import startup
from serving.compiled import (
    CompiledModel,
    CompiledTrees,
    Plan,
    Prepare,
    build_preprocessing,
    compile_estimator,
    describe_preprocessing,
    probe_columns,
    trees_verified,
    verified,
)
from serving.model_cache import ModelCache
from serving.modelio import (
    UnsafeArtifact,
    load_input_example,
    load_sklearn_artifact,
    read_mlmodel,
    trusted_types,
)
from serving.registry import BASELINE_TAG, ModelLoadFailed, ModelRefused, ModelRegistry, ModelVersionRef
from serving.schema import FeatureSchema, UnsupportedSignature

logger = logging.getLogger(__name__)

Task = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for a batch of rows.

    Attributes:
        labels: what the client gets (class labels, or the regression value).
        values: the same as float64 for the inference log (a class's index when labels are not numbers).
        scores: positive-class probability (binary), highest class probability
            (multiclass), None for regression.
    """

    labels: np.ndarray[Any, Any]
    values: np.ndarray[Any, np.dtype[np.float64]]
    scores: np.ndarray[Any, np.dtype[np.float64]] | None

    def __len__(self) -> int:
        return len(self.labels)


#: Rows up to which a batch walks the compiled trees; above, scikit-learn's own predictors are
#: faster (the walk costs per row and tree, theirs mostly per call). Measured on the serving
#: benchmark's 100 trees of depth 18, one thread: 8 rows 0.16 vs 0.60 ms, 32 rows 0.35 vs
#: 0.68 ms, 64 rows 0.57 vs 0.77 ms, 128 rows 1.06 vs 1.13 ms.
TREE_WALK_MAX_ROWS = 64
#: (row, tree, level) steps up to which a compiled walk runs on the worker's event loop instead of
#: a prediction thread (``LoadedModel.predict_inline``): 32 rows of 100 trees of depth 18, ~0.35 ms
#: (above), less than handing the batch to a thread and back costs the loop.
INLINE_WALK_STEPS = 32 * 100 * 18


def _trees_answer(rows: int, estimator: Any) -> bool:
    """Whether a batch of ``rows`` walks the compiled trees: a small one, or any until the model has loaded."""
    return rows <= TREE_WALK_MAX_ROWS or estimator is None


def _set_threads(threads: int) -> None:
    threadpool_limits(threads)


def _numeric_values(labels: np.ndarray[Any, Any], classes: np.ndarray[Any, Any] | None) -> np.ndarray[Any, Any]:
    if labels.dtype.kind in "biuf":
        return labels.astype(np.float64, copy=False)
    if classes is not None:
        return np.searchsorted(classes, labels).astype(np.float64)
    return np.full(len(labels), np.nan)


@dataclass(frozen=True)
class ModelThreads:
    """The threads of one loaded model version.

    Attributes:
        per_call: OpenMP/BLAS threads per prediction call (several workers already share the cores).
        pool: prediction threads (one per batch that may predict at once); a hung model blocks only these.

    Example:
        >>> ModelThreads(per_call=1, pool=2)
    """

    per_call: int = 1
    pool: int = 2


class LoadedModel:
    """One model version in memory, with its input schema and its own prediction threads.

    Each loaded model has its own small thread pool, so a model that hangs can
    only block its own threads; the fallback keeps answering.

    A version started from its cached compiled form (``load``) has no scikit-learn model yet:
    ``model`` loads it on first use (``load_in_background`` ahead of that), and until then
    every batch goes through the compiled preprocessing and trees.
    """

    def __init__(
        self,
        ref: ModelVersionRef,
        model: Any,
        schema: FeatureSchema,
        example: Any = None,
        threads: ModelThreads | None = None,
        compiled: CompiledModel | None = None,
        load_model: Callable[[], Any] | None = None,
    ) -> None:
        """``model``: the scikit-learn model; or None with ``compiled`` and ``load_model`` (which loads it)."""
        if model is None and (compiled is None or load_model is None):
            raise ValueError("a LoadedModel needs its model, or its compiled form and a way to load the model")
        self.ref = ref
        self.version = ref.version
        self._model = model
        self._load_model = load_model
        self._model_lock = threading.Lock()
        self._load_failure: tuple[float, Exception] | None = None  # (retry after, error) of the last failed load
        self._threads = threads or ModelThreads()
        self._limited = threading.local()  # which pool threads set their limits with scikit-learn imported
        self._loading: threading.Thread | None = None
        self.schema = schema
        self.example = example
        self.classes: np.ndarray[Any, Any] | None = None
        self.task: Task = "regression"
        if compiled is not None and model is None:
            self.classes = compiled.trees.classes
        elif hasattr(model, "predict_proba") and hasattr(model, "classes_"):
            self.classes = np.asarray(model.classes_)
        if self.classes is not None:
            self.task = "binary" if len(self.classes) == 2 else "multiclass"
        # A threshold-tuned classifier's predict is not the argmax of its probabilities (and never compiles).
        self._argmax_is_predict = self.task != "regression" and (model is None or not _has_threshold(model))
        # A request's rows, once verified equal: the preprocessing compiled to numpy in front of
        # the final estimator (``serving.compiled``); None: the model itself.
        self._plan: Plan | None = compiled.plan if compiled is not None else None
        self._prepare: Prepare | None = compiled.prepare if compiled is not None else None
        self._estimator: Any = model  # None until ``model`` is loaded, for a version started compiled
        # The final estimator's trees, compiled and verified equal.
        self._trees: CompiledTrees | None = compiled.trees if compiled is not None else None
        self.pool = ThreadPoolExecutor(
            max_workers=self._threads.pool,
            thread_name_prefix=f"model-v{ref.version}",
            initializer=_set_threads,
            initargs=(self._threads.per_call,),
        )

    def __repr__(self) -> str:
        return f"LoadedModel({self.ref.name!r}, version={self.version!r}, task={self.task!r})"

    @classmethod
    def load(
        cls,
        registry: ModelRegistry,
        ref: ModelVersionRef,
        threads: ModelThreads | None = None,
        extra_trusted: Iterable[str] = (),
        cache: ModelCache | None = None,
    ) -> LoadedModel:
        """Download, load and warm up ``ref`` (``extra_trusted``: skops types config adds to the reviewed ones).

        With a ``cache``, a verified cached copy is loaded instead of a download, and a version
        that loads and warms up is cached (``serving.model_cache``); the checks are the same.
        A cached version with its compiled form (``serving.compiled.CompiledModel``, kept
        beside it once verified) starts from that, without importing scikit-learn: a
        restarted server is ready in about a second, not three (``model`` loads the rest).

        Raises:
            ModelRefused: its artifacts live outside the registry's artifact root, or are not
                skops with reviewed types (nothing of it ran).
            ModelLoadFailed: the artifacts are missing or corrupt, the signature
                cannot be served, or the model fails on its own input example.
        """
        if cache is not None:
            started = cls._from_compiled(registry, ref, threads, extra_trusted, cache)
            if started is not None:
                return started
        folder = tempfile.mkdtemp(prefix=f"selfheal-model-{ref.version}-")
        try:
            with startup.phase("artifact fetch"):
                cached = cache.get(ref, registry.artifact_root) if cache is not None else None
                path = cached or registry.download(ref, into=folder)
            with startup.phase("artifact load (skops, trusted-type check)"):
                _, schema, example = _read_signature(ref, path)
                model, reviewed = _load_model(ref, path, extra_trusted)
            loaded = cls(ref, model, schema, example, threads)
            with startup.phase("first predict (warm-up)"):
                loaded.warm_up()
            if cache is not None:
                with startup.phase("cache the version"):
                    _keep(cache, registry, ref, None if cached else path, loaded.compiled_form(reviewed))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return loaded

    @classmethod
    def _from_compiled(
        cls,
        registry: ModelRegistry,
        ref: ModelVersionRef,
        threads: ModelThreads | None,
        extra_trusted: Iterable[str],
        cache: ModelCache,
    ) -> LoadedModel | None:
        """``ref`` started from its cached compiled form, warmed up; None when there is none that works."""
        with startup.phase("artifact fetch"):
            data = cache.get_compiled(ref, registry.artifact_root)
            path = cache.get(ref, registry.artifact_root) if data is not None else None
        if data is None or path is None:
            return None
        trusted = tuple(extra_trusted)

        def load_model() -> Any:
            # The cached copy again (checked again): the cache may have let it go since.
            again = cache.get(ref, registry.artifact_root)
            if again is not None:
                return _load_model(ref, again, trusted)[0]
            with tempfile.TemporaryDirectory(prefix=f"selfheal-model-{ref.version}-") as folder:
                return _load_model(ref, registry.download(ref, into=folder), trusted)[0]

        try:
            with startup.phase("compiled model load (no scikit-learn)"):
                compiled = CompiledModel.from_bytes(data)
                _check_provenance(compiled, trusted)
                _, schema, example = _read_signature(ref, path)
            loaded = cls(ref, None, schema, example, threads, compiled=compiled, load_model=load_model)
            with startup.phase("first predict (warm-up)"):
                loaded.warm_up()
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the stored form, the full load decides
            logger.warning("version %s: its cached compiled form is not used (%s); loading the model", ref.version, exc)
            return None
        logger.info("v%s: started from its cached compiled form; the scikit-learn model loads later", ref.version)
        return loaded

    @property
    def model(self) -> Any:
        """The scikit-learn model (for a version started compiled, loaded now if it was not yet).

        Once loaded, it is compiled and verified again exactly as at a first load, and those
        compiled steps replace the stored ones (or, where they do not verify, scikit-learn's
        path does). A failed load is raised again without a new try for ``RELOAD_AFTER_SECONDS``.

        Raises:
            ModelLoadFailed, ModelRefused: a version started compiled whose model cannot be loaded.
        """
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._load_now()
        return self._model

    def _load_now(self) -> Any:
        failed = self._load_failure
        if failed is not None and time.monotonic() < failed[0]:
            raise failed[1]
        assert self._load_model is not None
        try:
            model = self._load_model()
        except (ModelLoadFailed, ModelRefused) as exc:
            self._load_failure = (time.monotonic() + RELOAD_AFTER_SECONDS, exc)
            raise
        stored = self._plan, self._trees is None
        self._adopt(model, self._example_columns() if self.example is not None else None)
        if (self._plan, self._trees is None) != stored:
            logger.warning("v%s: compiled again from the loaded model, unlike its stored form", self.version)
        return model

    def load_in_background(self) -> None:
        """Load ``model`` in a thread if it is not loaded yet (a failure is logged; the compiled form keeps serving)."""
        if self._model is not None or self._loading is not None:
            return

        def load() -> None:
            try:
                self.model  # noqa: B018 - the property loads it
            except (ModelLoadFailed, ModelRefused) as exc:
                logger.error("version %s keeps serving from its compiled form: %s", self.version, exc)
            else:
                logger.info("v%s: scikit-learn model loaded", self.version)

        self._loading = threading.Thread(target=load, name=f"load-model-v{self.version}", daemon=True)
        self._loading.start()

    def classes_list(self) -> list[Any]:
        """The class labels (empty for a regressor)."""
        return [] if self.classes is None else list(self.classes.tolist())

    def warm_up(self) -> None:
        """Predict the logged input example once, in a prediction thread, so a broken model never goes live."""
        if self.example is None:
            return
        try:
            columns = self._example_columns()
            self.pool.submit(self.predict, columns).result(timeout=60)
        except Exception as exc:  # the model's own code may raise anything: any failure keeps it from going live
            self.pool.shutdown(wait=False)
            raise ModelLoadFailed(
                self.ref.name, self.version, f"it fails on its own input example: {type(exc).__name__}: {exc}"
            ) from exc
        if self._prepare is None:
            self._adopt(self._model, columns)

    def _adopt(self, model: Any, columns: dict[str, list[Any]] | None) -> None:
        """Predict through ``model``'s compiled steps where they verify on ``columns`` (``_compiled_of``), else its own.

        The final estimator is set first: a batch that reads the old compiled steps and the new
        estimator (a version started compiled, its model just loaded) predicts through two
        verified paths; one that reads no compiled steps, through the whole model.
        """
        found = self._compiled_of(model, columns) if columns is not None else None
        self._estimator = model.steps[-1][1] if hasattr(model, "steps") else model
        self._plan, self._prepare, self._trees = found or (None, None, None)

    def _example_columns(self) -> dict[str, list[Any]]:
        frame = self.example[list(self.schema.names)]
        return {name: frame[name].tolist() for name in self.schema.names}

    def _compiled_of(
        self, model: Any, columns: dict[str, list[Any]]
    ) -> tuple[Plan, Prepare, CompiledTrees | None] | None:
        """``model``'s preprocessing (plan and steps) and trees compiled, where they give exactly its answers.

        The preprocessing is probed on the input example's rows, each column missing in turn and
        each text column unknown, and on a row with every column missing, handed over as the
        server hands a request's columns (``FeatureSchema.arrays``); the trees on those rows and
        on every split's edge (``trees_verified``). None: the preprocessing does not compile or
        differs (the whole model predicts); trees None: the final estimator predicts.
        """
        plan = describe_preprocessing(model)
        if plan is None:
            return None
        prepare = build_preprocessing(plan)
        text = [col.name for col in self.schema.columns if col.type == "string"]
        # Two batches: every branch in one, and one row with nothing given (a column's dtype
        # in a batch where it is missing throughout is not the one it has beside values).
        try:
            batches = [probe_columns(columns, text), {name: [None] for name in columns}]
            probes = [(self.schema.frame(rows), self.schema.arrays(rows)) for rows in batches]
        except (TypeError, ValueError) as exc:
            logger.info("v%s: compiled preprocessing not used: no probe frame (%s)", self.version, exc)
            return None
        if not all(verified(prepare, model, probe, arrays) for probe, arrays in probes):
            return None
        probe, arrays = probes[0]
        estimator = model.steps[-1][1]
        trees = compile_estimator(estimator)
        verified_trees = trees if trees is not None and trees_verified(trees, estimator, prepare(arrays)) else None
        logger.info(
            "v%s: preprocessing compiled%s (equal to scikit-learn's on %d probe rows)",
            self.version,
            ", trees compiled" if verified_trees else "",
            len(probe),
        )
        return plan, prepare, verified_trees

    @property
    def compiled(self) -> bool:
        """Whether predictions go through the compiled preprocessing (``serving.compiled``)."""
        return self._prepare is not None

    @property
    def compiled_trees(self) -> bool:
        """Whether they also go through the final estimator's trees compiled (``CompiledTrees``)."""
        return self._trees is not None

    def compiled_form(self, reviewed_types: Iterable[str] = ()) -> bytes | None:
        """The verified compiled preprocessing and trees as ``CompiledModel`` bytes (None: not both compiled).

        ``reviewed_types``: the artifact's types only the reviewed list trusts (``load_sklearn_artifact``),
        which a start from these bytes checks against its own list.
        """
        if self._prepare is None or self._plan is None or self._trees is None:
            return None
        try:
            return CompiledModel(self._plan, self._trees, _sklearn_version(), tuple(reviewed_types)).to_bytes()
        except (TypeError, ValueError) as exc:  # a category JSON cannot hold: served compiled, not stored
            logger.info("v%s: compiled form not stored: %s", self.version, exc)
            return None

    def predict(self, columns: dict[str, list[Any]]) -> Prediction:
        """Predict validated columns (runs in one of this model's threads).

        A request's few rows go through the compiled preprocessing when it was verified
        (``serving.compiled``: its per-call cost is most of a small batch's), and a batch of at
        most ``TREE_WALK_MAX_ROWS`` rows through the compiled trees (every batch, for a version
        started compiled until its model has loaded); else as ``predict_frame``.
        """
        prepare, trees, estimator = self._prepare, self._trees, self._estimator  # estimator None: not loaded yet
        if prepare is None:
            return self.predict_frame(self.schema.frame(columns))
        x = prepare(self.schema.arrays(columns))
        if trees is not None and _trees_answer(len(x), estimator):
            return self._answer(trees, x)
        self._limit_threads()
        return self._answer(estimator, x)

    def predict_inline(self, columns: dict[str, list[Any]]) -> Prediction | None:
        """``predict``'s answer when it is only the compiled walk of a small batch; else None, and nothing done.

        Such a call is numpy on arrays this module built and verified, of a cost bounded by
        ``INLINE_WALK_STEPS``: no code of the model's own that could hang, so it needs neither a
        thread nor a timeout (``serving.predictor`` calls it on the event loop). The fields are
        read once: a model loading in the background (``load_in_background``) may change them.
        """
        prepare, trees, estimator = self._prepare, self._trees, self._estimator
        rows = len(next(iter(columns.values()), ()))
        if prepare is None or trees is None or not _trees_answer(rows, estimator):
            return None
        if rows * len(trees.roots) * max(trees.depth, 1) > INLINE_WALK_STEPS:
            return None
        return self._answer(trees, prepare(self.schema.arrays(columns)))

    def predict_frame(self, frame: pd.DataFrame) -> Prediction:
        """Predict a frame in the signature's dtypes (``FeatureSchema.frame``, ``validate_table``'s) with the model."""
        model = self.model
        self._limit_threads()
        return self._answer(model, frame)

    def _limit_threads(self) -> None:
        """This thread's OpenMP/BLAS limit, once scikit-learn is imported (a pool thread of a version started
        compiled set it before: OpenMP's limit is per thread, and the library was not loaded yet)."""
        if not getattr(self._limited, "done", False):
            _set_threads(self._threads.per_call)
            self._limited.done = True

    def _answer(self, model: Any, x: Any) -> Prediction:
        if self.task == "regression":
            values = np.asarray(model.predict(x), dtype=np.float64).reshape(-1)
            return Prediction(values, values, None)
        proba = np.asarray(model.predict_proba(x), dtype=np.float64)
        assert self.classes is not None
        labels = self.classes[proba.argmax(axis=1)] if self._argmax_is_predict else np.asarray(model.predict(x))
        scores = proba[:, 1] if self.task == "binary" else proba.max(axis=1)
        return Prediction(labels, _numeric_values(labels, self.classes), scores)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


#: Seconds before a version started compiled tries again to load a model that failed to load.
RELOAD_AFTER_SECONDS = 60.0


def _sklearn_version() -> str:
    """The installed scikit-learn's version, without importing it."""
    return version("scikit-learn")


def _check_provenance(compiled: CompiledModel, extra_trusted: Iterable[str]) -> None:
    """``ValueError`` unless ``compiled`` was made under this scikit-learn and the types it needed are trusted now."""
    installed = _sklearn_version()
    if compiled.sklearn_version != installed:
        raise ValueError(f"compiled under scikit-learn {compiled.sklearn_version}, {installed} installed")
    untrusted = sorted(set(compiled.reviewed_types) - set(trusted_types(extra_trusted)))
    if untrusted:
        raise ValueError(f"its artifact holds types no longer trusted: {', '.join(untrusted)}")


def _read_signature(ref: ModelVersionRef, path: str) -> tuple[dict[str, Any], FeatureSchema, Any]:
    """The MLmodel file, input schema and input example of a local model folder (``ModelLoadFailed`` if unusable)."""
    try:
        meta = read_mlmodel(path)
        return meta, FeatureSchema.from_mlmodel(meta), load_input_example(path, meta)
    except UnsupportedSignature as exc:
        raise ModelLoadFailed(ref.name, ref.version, str(exc)) from exc
    except Exception as exc:  # a foreign artifact's files can fail to parse in any way; the cause is chained
        raise ModelLoadFailed(ref.name, ref.version, f"{type(exc).__name__}: {exc}") from exc


def _load_model(ref: ModelVersionRef, path: str, extra_trusted: Iterable[str]) -> tuple[Any, list[str]]:
    """The scikit-learn model of a local model folder (skops, reviewed types only), and the reviewed types it holds."""
    try:
        return load_sklearn_artifact(path, extra_trusted)
    except UnsafeArtifact as exc:
        raise ModelRefused(ref.name, ref.version, exc.reason, str(exc)) from exc
    except Exception as exc:  # unpickling/loading foreign artifacts can raise anything; the cause is chained
        raise ModelLoadFailed(ref.name, ref.version, f"{type(exc).__name__}: {exc}") from exc


def _keep(
    cache: ModelCache, registry: ModelRegistry, ref: ModelVersionRef, path: str | None, compiled: bytes | None
) -> None:
    """Cache a version that loaded, and its compiled form (``path``: its downloaded folder; None: from the cache).

    A registry that stopped answering meanwhile only skips the copy.
    """
    if path is not None:
        try:
            source = registry.source(ref)
        except ModelLoadFailed as exc:
            logger.warning("version %s not cached: %s", ref.version, exc)
            return
        cache.put(ref, path, source)
    if compiled is not None:
        cache.put_compiled(ref, compiled)


def _has_threshold(model: Any) -> bool:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return type(final).__name__ in {"FixedThresholdClassifier", "TunedThresholdClassifierCV"}


@dataclass(frozen=True)
class Baseline:
    """The last resort: one constant answer (majority class, or mean) derived from a model.

    Attributes:
        label: the answer given to every row.
        value: the same as float64 (inference log).
        score: the score reported with it (None for regression).
        version: the model version it was derived from.
        source: ``tag`` (the pipeline's training prior) or ``input-example``.
    """

    label: Any
    value: float
    score: float | None
    version: str
    source: str

    def predict(self, rows: int) -> Prediction:
        labels = np.full(rows, self.label, dtype=object if isinstance(self.label, str) else None)
        values = np.full(rows, self.value, dtype=np.float64)
        scores = None if self.score is None else np.full(rows, self.score, dtype=np.float64)
        return Prediction(labels, values, scores)

    @classmethod
    def from_model(cls, model: LoadedModel) -> Baseline:
        """From the version's ``selfheal.baseline`` tag, else from its predictions on its input example."""
        tag = model.ref.tags.get(BASELINE_TAG)
        if tag:
            try:
                data = json.loads(tag)
                label = data["prediction"]
                score = data.get("score")
                return cls(
                    label,
                    float(_numeric_values(np.asarray([label]), model.classes)[0]),
                    None if score is None else float(score),
                    model.version,
                    "tag",
                )
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("version %s: ignoring malformed %s tag %r: %s", model.version, BASELINE_TAG, tag, exc)
        if model.example is not None:
            frame = model.example[list(model.schema.names)]
            pred = model.predict({name: frame[name].tolist() for name in model.schema.names})
            if model.task == "regression":
                mean = float(np.mean(pred.values))
                return cls(mean, mean, None, model.version, "input-example")
            label, count = Counter(pred.labels.tolist()).most_common(1)[0]
            share = count / len(pred)
            score = share if model.task != "binary" or label == model.classes_list()[1] else 1.0 - share
            return cls(
                label,
                float(_numeric_values(np.asarray([label]), model.classes)[0]),
                score,
                model.version,
                "input-example",
            )
        if model.task == "regression":
            return cls(0.0, 0.0, None, model.version, "default")
        first = model.classes_list()[0]
        return cls(first, float(_numeric_values(np.asarray([first]), model.classes)[0]), None, model.version, "default")
