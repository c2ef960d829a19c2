"""A fitted scikit-learn preprocessing as plain numpy: the same matrix, without the per-call cost.

A ``ColumnTransformer`` costs ~2.5 ms per call on a 13-column frame whatever the row
count (measured: 2.5 ms of a 3.5 ms ``predict_proba`` on 1-32 rows, the other 0.7 ms
the gradient boosting itself), which a micro-batch of a few requests pays in full.
``compile_preprocessing`` turns the fitted steps in front of a ``Pipeline``'s final
estimator into array operations on the frame's columns when every step is one it knows,
with the fitted state read from the step (``statistics_``, ``categories_``):

- ``ColumnTransformer`` (dense output, column names or positions, remainder drop or passthrough);
- ``SimpleImputer`` (missing = NaN, no indicator) and ``StandardScaler``;
- ``OrdinalEncoder`` and ``OneHotEncoder`` (no dropped or infrequent categories; unknown
  values as the encoder's ``unknown_value``, or all zeros with ``handle_unknown="ignore"``);
- ``Pipeline`` of those, ``"passthrough"``.

Anything else (another transformer, pandas output, a sparse matrix, categories with a
missing value among them) compiles to None and the model predicts as scikit-learn does.
A compiled step is only used after ``verified`` has found it equal to scikit-learn's own
``transform``, value for value and dtype for dtype, on probe rows built from the model's
input example (as given, each column missing in turn, each text column unknown).

Example:
    >>> prepare = compile_preprocessing(pipeline)
    >>> probe = schema.frame(probe_columns(example_columns, text=["channel"]))
    >>> if prepare is not None and verified(prepare, pipeline, probe):
    ...     proba = pipeline[-1].predict_proba(prepare(frame))
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: A step's fitted state as plain data (JSON: kinds, column names, categories, numbers), from which
#: its block is built: what a restart reads instead of the scikit-learn model (``CompiledModel``).
Plan = dict[str, Any]
#: A compiled step: a block of the frame (or the previous step's array) -> the step's output.
Block = Callable[[Any], np.ndarray[Any, Any]]
#: The whole preprocessing: the model's input frame, or its columns as ``FeatureSchema.arrays`` gives
#: them -> what the final estimator takes.
Prepare = Callable[[pd.DataFrame | Mapping[str, np.ndarray[Any, Any]]], np.ndarray[Any, Any]]


def describe_preprocessing(model: Any) -> Plan | None:
    """The steps of ``model`` (a fitted ``Pipeline``) before its final estimator as a plan; None if any is unknown."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) < 2:
        return None
    return _describe_chain([step for _, step in steps[:-1]])


def build_preprocessing(plan: Plan) -> Prepare:
    """The compiled preprocessing a plan (``describe_preprocessing``) describes; ``ValueError`` if it is not one."""
    return _build(plan)


def compile_preprocessing(model: Any) -> Prepare | None:
    """The steps of ``model`` (a fitted ``Pipeline``) before its final estimator, compiled; None if any is unknown."""
    plan = describe_preprocessing(model)
    return None if plan is None else build_preprocessing(plan)


def verified(
    prepare: Prepare, model: Any, probe: pd.DataFrame, arrays: Mapping[str, np.ndarray[Any, Any]] | None = None
) -> bool:
    """Whether ``prepare`` gives exactly what ``model``'s own steps give on ``probe`` (same dtype, shape, values).

    ``arrays``: the probe's columns as the server hands them to ``prepare`` (``FeatureSchema.arrays``);
    None: ``prepare`` takes the frame itself.
    """
    try:
        expected = np.asarray(model[:-1].transform(probe))
        got = prepare(probe if arrays is None else arrays)
    except Exception as exc:  # noqa: BLE001 - a probe scikit-learn or the compiled step refuses: not proven equal
        logger.info("compiled preprocessing not used: the probe failed: %s: %s", type(exc).__name__, exc)
        return False
    if got.dtype != expected.dtype or got.shape != expected.shape:
        logger.info(
            "compiled preprocessing not used: %s%s vs scikit-learn's %s%s",
            got.dtype,
            got.shape,
            expected.dtype,
            expected.shape,
        )
        return False
    same = (
        np.array_equal(got, expected, equal_nan=True)
        if got.dtype.kind in "fc"
        else bool(pd.DataFrame(got).equals(pd.DataFrame(expected)))
    )
    if not same:
        logger.info("compiled preprocessing not used: its values differ from scikit-learn's on the probe rows")
    return same


def probe_columns(
    columns: dict[str, list[Any]], text: Sequence[str], unknown: str = "\x00unknown"
) -> dict[str, list[Any]]:
    """Rows for each branch: ``columns`` as given, then per column a copy with it missing (and unknown, for text)."""
    out = {name: list(values) for name, values in columns.items()}
    rows = len(next(iter(columns.values()), []))
    for name in columns:
        variants = [None] + ([unknown] if name in text else [])
        for value in variants:
            for other, values in columns.items():
                out[other] += [value] * rows if other == name else list(values)
    return out


# -- the final estimator: histogram gradient boosting ------------------------------------
#: The arrays of ``CompiledTrees`` (what ``CompiledModel.to_bytes`` stores).
_TREE_ARRAYS = (
    "roots",
    "feature",
    "threshold",
    "missing_left",
    "left",
    "right",
    "value",
    "baseline",
    "splits",
    "n_features",
)
#: scikit-learn's link of each loss ``CompiledTrees`` turns raw scores with, by the link's class name.
_LINKS = {"IdentityLink": "identity", "LogLink": "log", "LogitLink": "logit", "MultinomialLogit": "softmax"}


class CompiledTrees:
    """A fitted ``HistGradientBoosting{Classifier,Regressor}`` walked for every row and tree at once.

    scikit-learn calls each tree's predictor in turn (100 calls for 100 iterations, each with
    its input checks and thread set-up): 0.7 ms for a batch of a few rows. Here the trees are
    one set of node arrays (a leaf points at itself), and one step moves every (row, tree)
    pair down one level: ``depth`` steps of a few array operations. A node's rule is
    scikit-learn's: a missing value goes the side the node learned, else ``x <= threshold``
    goes left. The leaf values are added tree after tree onto the baseline, as scikit-learn
    adds them (``np.cumsum`` adds in order), so the sums are the same to the last bit, and the
    estimator's link turns them into probabilities or values as scikit-learn's does (the
    logistic through libm's ``exp``, as SciPy's ``expit``; the others in numpy), without
    importing either: ``trees_verified`` checks the outputs are equal before they are used.
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray[Any, Any]], link: str, classes: np.ndarray[Any, Any] | None
    ) -> None:
        missing = [name for name in _TREE_ARRAYS if name not in arrays]
        if missing or link not in _LINKS.values():
            raise ValueError(f"not compiled trees: missing arrays {missing}, link {link!r}")
        self.roots = np.asarray(arrays["roots"], dtype=np.intp)
        self.feature = np.asarray(arrays["feature"], dtype=np.intp)
        self.threshold = np.asarray(arrays["threshold"], dtype=np.float64)
        self.missing_left = np.asarray(arrays["missing_left"], dtype=bool)
        self.left = np.asarray(arrays["left"], dtype=np.intp)
        self.right = np.asarray(arrays["right"], dtype=np.intp)
        self.value = np.asarray(arrays["value"], dtype=np.float64)
        self.baseline = np.asarray(arrays["baseline"], dtype=np.float64).reshape(-1)
        self.splits = np.asarray(arrays["splits"], dtype=np.float64).reshape(-1, 2)
        self.n_features = int(np.asarray(arrays["n_features"]))
        self.k = len(self.baseline)
        self.link = link
        self.classes = classes
        nodes = len(self.feature)
        bounds: list[tuple[np.ndarray[Any, Any], int]] = [(self.roots, nodes), (self.left, nodes)]
        bounds += [(self.right, nodes), (self.feature, self.n_features), (self.splits[:, 0], self.n_features)]
        if (
            {len(self.threshold), len(self.missing_left), len(self.left), len(self.right), len(self.value)} != {nodes}
            or any(len(a) and (a.min() < 0 or a.max() >= bound) for a, bound in bounds)
            or not self.k
            or not len(self.roots)
            or len(self.roots) % self.k
        ):
            raise ValueError("not compiled trees: the node arrays disagree")
        self.depth = _depth(self.roots, self.left, self.right)
        # The walk's tables (``raw``). A node reads its feature from the row's values as they are when
        # a missing value goes right (NaN <= threshold is false), from a copy with NaN as -inf when it
        # goes left (-inf <= threshold is true), so one comparison applies scikit-learn's whole rule.
        self._column = np.where(self.missing_left, self.feature, self.feature + self.n_features)
        self._children = np.stack([self.left, self.right], axis=1).ravel()  # node * 2 + (goes right)

    @classmethod
    def from_nodes(cls, estimator: Any, nodes: Sequence[np.ndarray[Any, Any]]) -> CompiledTrees | None:
        """The trees of ``estimator`` from its predictors' node arrays; None when its link is not one known here."""
        link = _LINKS.get(type(getattr(getattr(estimator, "_loss", None), "link", None)).__name__)
        if link is None:
            return None
        offsets = np.cumsum([0, *(len(n) for n in nodes)])
        every = np.concatenate(nodes)
        leaf = every["is_leaf"].astype(bool)
        own = np.arange(len(every))
        tree_of = np.repeat(np.arange(len(nodes)), [len(n) for n in nodes])
        arrays = {
            "roots": offsets[:-1],
            "feature": np.where(leaf, 0, every["feature_idx"]),
            "threshold": np.where(leaf, np.inf, every["num_threshold"]),
            "missing_left": np.where(leaf, True, every["missing_go_to_left"].astype(bool)),
            "left": np.where(leaf, own, offsets[tree_of] + every["left"]),
            "right": np.where(leaf, own, offsets[tree_of] + every["right"]),
            "value": every["value"],
            "baseline": 0.0 + np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1),
            "splits": np.unique(np.stack([every["feature_idx"][~leaf], every["num_threshold"][~leaf]], axis=1), axis=0),
            "n_features": np.asarray(int(estimator.n_features_in_)),
        }
        classes = np.asarray(estimator.classes_) if hasattr(estimator, "classes_") else None
        return cls(arrays, link, classes)

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        """What ``CompiledTrees(arrays, link, classes)`` is built from again."""
        return {name: np.asarray(getattr(self, name)) for name in _TREE_ARRAYS}

    def raw(self, x: Any) -> np.ndarray[Any, Any]:
        """What the estimator's ``_raw_predict`` gives: the baseline plus each tree's leaf, per row and output."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"X has shape {x.shape}; the trees take {self.n_features} features")
        # Each row's values twice: NaN as -inf (read by nodes that send it left), then as it is.
        values = np.concatenate([np.where(np.isnan(x), -np.inf, x), x], axis=1).ravel()
        row_start = (np.arange(x.shape[0]) * (2 * self.n_features))[:, None]
        at = np.broadcast_to(self.roots, (x.shape[0], len(self.roots)))
        # Array operations per level, not per (row, tree) pair: their count sets a small batch's cost.
        for _ in range(self.depth):
            goes_left = values.take(row_start + self._column.take(at)) <= self.threshold.take(at)
            at = self._children.take(at * 2 + ~goes_left)
        leaves = self.value[at].reshape(x.shape[0], -1, self.k)
        summed = np.concatenate([np.broadcast_to(self.baseline, (x.shape[0], 1, self.k)), leaves], axis=1)
        return np.asfortranarray(np.cumsum(summed, axis=1)[:, -1, :])

    def predict_proba(self, x: Any) -> np.ndarray[Any, Any]:
        """A classifier's probabilities, as its loss's ``predict_proba`` gives them."""
        raw = self.raw(x)
        if self.link == "softmax":  # scikit-learn's utils.extmath.softmax
            raw = raw - raw.max(axis=1).reshape(-1, 1)
            np.exp(raw, out=raw)
            raw /= raw.sum(axis=1).reshape(-1, 1)
            return np.asarray(raw)
        if self.link != "logit":
            raise ValueError(f"a {self.link} link gives no probabilities")
        proba = np.empty((raw.shape[0], 2), dtype=raw.dtype)
        proba[:, 1] = [_expit(v) for v in raw[:, 0].tolist()]
        proba[:, 0] = 1 - proba[:, 1]
        return proba

    def predict(self, x: Any) -> np.ndarray[Any, Any]:
        if self.classes is not None:
            return np.asarray(self.classes[np.argmax(self.predict_proba(x), axis=1)])
        raw = self.raw(x).ravel()
        return np.exp(raw) if self.link == "log" else raw


def _expit(value: float) -> float:
    """SciPy's ``expit`` for one value: ``1 / (1 + exp(-x))`` with libm's ``exp`` (numpy's differs in the last bit)."""
    try:
        return 1.0 / (1.0 + math.exp(-value))
    except OverflowError:
        return 0.0


def _depth(roots: np.ndarray[Any, Any], left: np.ndarray[Any, Any], right: np.ndarray[Any, Any]) -> int:
    """Steps until every root's walk is at a leaf, whichever way it goes (a leaf points at itself)."""
    at = np.unique(roots)
    steps = 0
    while True:
        following = np.unique(np.concatenate([left[at], right[at]]))
        if np.array_equal(following, at):
            return steps
        at = following
        steps += 1
        if steps > len(left):
            raise ValueError("not compiled trees: a cycle among the nodes")


def compile_estimator(estimator: Any) -> CompiledTrees | None:
    """``estimator``'s trees as ``CompiledTrees``; None for any other estimator or a categorical split."""
    kind = type(estimator).__name__
    if kind not in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        return None
    if not type(estimator).__module__.startswith("sklearn.") or getattr(estimator, "_preprocessor", None) is not None:
        return None
    predictors = getattr(estimator, "_predictors", None)
    if not predictors:
        return None
    nodes = [p.nodes for iteration in predictors for p in iteration]
    if any(n["is_categorical"].any() for n in nodes):
        return None
    return CompiledTrees.from_nodes(estimator, nodes)


def trees_verified(trees: CompiledTrees, estimator: Any, x: np.ndarray[Any, Any]) -> bool:
    """Whether ``trees`` answer exactly as ``estimator`` on ``x`` and on every split's edge.

    The edges: for each distinct (feature, threshold) of the trees, ``x``'s first row with that
    feature at the threshold and just above it, and with each feature missing. On ``x`` and the
    edges the raw scores must be equal, and on ``x`` the values and probabilities too (the link
    is scikit-learn's formula, checked on those rows). Comparing the public outputs on the edges
    as well walked the trees twice more over thousands of rows: 0.12 s of a 100-tree model's
    load instead of 0.06 s.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        return False
    features, thresholds = trees.splits[:, 0].astype(np.intp), trees.splits[:, 1]
    edges = np.repeat(x[:1], 2 * len(features) + trees.n_features, axis=0)
    n = len(features)
    edges[np.arange(n), features] = thresholds
    edges[n + np.arange(n), features] = np.nextafter(thresholds, np.inf)
    edges[2 * n + np.arange(trees.n_features), np.arange(trees.n_features)] = np.nan
    probe = np.vstack([x, edges])
    try:
        pairs = [(trees.raw(probe), np.asarray(estimator._raw_predict(probe)))]
        pairs.append((trees.predict(x), estimator.predict(x)))
        if hasattr(estimator, "predict_proba"):
            pairs.append((trees.predict_proba(x), estimator.predict_proba(x)))
    except Exception as exc:  # noqa: BLE001 - a probe either side refuses: not proven equal
        logger.info("compiled trees not used: the probe failed: %s: %s", type(exc).__name__, exc)
        return False
    same = all(
        got.dtype == want.dtype and np.array_equal(got, want, equal_nan=got.dtype.kind in "fc") for got, want in pairs
    )
    if not same:
        logger.info("compiled trees not used: they differ from scikit-learn's on %d probe rows", len(probe))
    return same


# -- the whole compiled model, stored ---------------------------------------------------
class CompiledModel:
    """A version's verified compiled preprocessing and trees, as bytes a restart serves from without scikit-learn.

    Written by a server once both were found equal to scikit-learn's on the probe rows
    (``LoadedModel``): plain data only, a numpy archive read with ``allow_pickle=False`` (the
    plan and the classes as JSON inside it), so reading it runs no code. ``from_bytes``
    raises ``ValueError`` for anything that is not such an archive.

    Example:
        >>> data = CompiledModel(plan, trees).to_bytes()
        >>> CompiledModel.from_bytes(data).trees.predict_proba(prepare(columns))
    """

    FORMAT = 1

    def __init__(
        self, plan: Plan, trees: CompiledTrees, sklearn_version: str = "", reviewed_types: Sequence[str] = ()
    ) -> None:
        """``sklearn_version``, ``reviewed_types``: what it was verified under and which of its artifact's
        types only the reviewed list trusted (a start from it checks both; see ``serving.model``)."""
        self.plan = plan
        self.prepare = build_preprocessing(plan)
        self.trees = trees
        self.sklearn_version = sklearn_version
        self.reviewed_types = tuple(reviewed_types)

    def to_bytes(self) -> bytes:
        classes = self.trees.classes
        meta = {
            "format": self.FORMAT,
            "plan": self.plan,
            "link": self.trees.link,
            "classes": None if classes is None else classes.tolist(),
            "classes_dtype": None if classes is None else classes.dtype.str,
            "sklearn_version": self.sklearn_version,
            "reviewed_types": list(self.reviewed_types),
        }
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        arrays.update(self.trees.arrays())
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CompiledModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            meta = json.loads(arrays.pop("meta").tobytes())
            if meta.get("format") != cls.FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {cls.FORMAT}")
            classes = None if meta["classes"] is None else np.asarray(meta["classes"], dtype=meta["classes_dtype"])
            trees = CompiledTrees(arrays, meta["link"], classes)
            return cls(meta["plan"], trees, str(meta["sklearn_version"]), [str(t) for t in meta["reviewed_types"]])
        except (
            OSError,
            KeyError,
            TypeError,
            AttributeError,
            UnicodeDecodeError,
            OverflowError,
            RecursionError,
            zipfile.BadZipFile,
        ) as exc:
            raise ValueError(f"not a compiled model: {type(exc).__name__}: {exc}") from exc


# -- steps: each fitted step described as plain data (a plan), and a plan built into a block --
def _describe(step: Any) -> Plan | None:
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return {"kind": "passthrough"}
    if _output_config(step) not in (None, "default"):
        return None
    kind = type(step).__name__
    if not type(step).__module__.startswith("sklearn."):
        return None
    if kind == "Pipeline":
        return _describe_chain([s for _, s in step.steps])
    describe = _DESCRIBERS.get(kind)
    return describe(step) if describe is not None else None


def _describe_chain(steps: Sequence[Any]) -> Plan | None:
    """``steps`` one after the other (None: one of them does not compile)."""
    plans = [_describe(step) for step in steps]
    if any(plan is None for plan in plans):
        return None
    return {"kind": "chain", "steps": plans}


def _output_config(step: Any) -> str | None:
    config = getattr(step, "_sklearn_output_config", None) or {}
    return config.get("transform") if isinstance(config, dict) else None


def _column_transformer(ct: Any) -> Plan | None:
    if getattr(ct, "sparse_output_", True):
        return None
    names = list(getattr(ct, "feature_names_in_", []))
    parts: list[list[Any]] = []
    for _, trans, cols in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        selected = _columns(cols, names)
        if selected is None:
            return None
        if not selected:
            continue
        plan = _describe(trans)
        if plan is None:
            return None
        parts.append([selected, plan])
    return {"kind": "columns", "parts": parts} if parts else None


def _columns(cols: Any, names: Sequence[str]) -> list[str] | None:
    """The column names a transformer takes (None: a selection this compiler does not follow)."""
    if isinstance(cols, str) or callable(cols) or isinstance(cols, slice):
        return None
    out = []
    for col in np.asarray(cols).tolist() if not isinstance(cols, list) else cols:
        if isinstance(col, bool):
            return None
        if isinstance(col, int):
            if not 0 <= col < len(names):
                return None
            out.append(str(names[col]))
        elif isinstance(col, str):
            out.append(col)
        else:
            return None
    return out


def _imputer(imputer: Any) -> Plan | None:
    if getattr(imputer, "add_indicator", False) or not _is_nan(imputer.missing_values):
        return None
    stats = np.asarray(imputer.statistics_)
    strategy = imputer.strategy
    if strategy in ("mean", "median"):
        keep = np.ones(len(stats), dtype=bool) if imputer.keep_empty_features else ~np.isnan(stats.astype(float))
        return {"kind": "impute", "keep": keep.tolist(), "fill": stats[keep].astype(np.float64).tolist()}
    if strategy == "constant" and isinstance(imputer.fill_value, str):
        return {"kind": "impute_text", "value": imputer.fill_value}
    return None


def _categories(encoder: Any) -> list[list[Any]] | None:
    """Each column's categories as plain values (None: a category is missing or not a plain value)."""
    if getattr(encoder, "_infrequent_enabled", False):
        return None
    out = []
    for cats in encoder.categories_:
        values = cats.tolist()
        if any(not isinstance(v, (str, int, float)) or (isinstance(v, float) and v != v) for v in values):
            return None
        out.append(values)
    return out


def _ordinal(encoder: Any) -> Plan | None:
    categories = _categories(encoder)
    if categories is None or encoder.handle_unknown != "use_encoded_value":
        return None
    dtype = np.dtype(encoder.dtype).str
    return {"kind": "ordinal", "categories": categories, "unknown": float(encoder.unknown_value), "dtype": dtype}


def _one_hot(encoder: Any) -> Plan | None:
    categories = _categories(encoder)
    if (
        categories is None
        or getattr(encoder, "drop_idx_", None) is not None
        or encoder.handle_unknown not in ("ignore", "infrequent_if_exist")
    ):
        return None
    return {"kind": "one_hot", "categories": categories, "dtype": np.dtype(encoder.dtype).str}


def _scaler(scaler: Any) -> Plan | None:
    mean = np.asarray(scaler.mean_, dtype=np.float64).tolist() if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype=np.float64).tolist() if scaler.with_std else None
    return {"kind": "scale", "mean": mean, "scale": scale}


def _identity(function: Any) -> Plan | None:
    """A ``FunctionTransformer`` without a function: how a fitted ``ColumnTransformer`` keeps ``"passthrough"``."""
    if function.func is not None or function.validate:
        return None
    return {"kind": "passthrough"}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


_DESCRIBERS: dict[str, Callable[[Any], Plan | None]] = {
    "ColumnTransformer": _column_transformer,
    "SimpleImputer": _imputer,
    "OrdinalEncoder": _ordinal,
    "OneHotEncoder": _one_hot,
    "StandardScaler": _scaler,
    "FunctionTransformer": _identity,
}


def _build(plan: Plan) -> Block:
    """The block a plan describes (``ValueError``: not a plan ``_describe`` makes)."""
    try:
        builder = _BUILDERS[plan["kind"]]
        return builder(plan)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"not a preprocessing plan: {type(exc).__name__}: {exc}") from exc


def _build_chain(plan: Plan) -> Block:
    blocks = [_build(step) for step in plan["steps"]]

    def chained(data: Any) -> np.ndarray[Any, Any]:
        for block in blocks:
            data = block(data)
        return np.asarray(data)

    return chained


def _build_columns(plan: Plan) -> Block:
    parts = [([str(c) for c in cols], _build(step)) for cols, step in plan["parts"]]
    needed = sorted({c for cols, _ in parts for c in cols})

    def transform(data: Any) -> np.ndarray[Any, Any]:
        # Column by column: selecting a sub-frame per transformer costs more than the transforms.
        arrays: Mapping[str, Any]
        if isinstance(data, pd.DataFrame):
            arrays = {c: data[c].to_numpy() for c in needed}
        elif isinstance(data, Mapping):
            arrays = data  # FeatureSchema.arrays: the frame's columns, without building the frame
        else:
            raise TypeError("a compiled ColumnTransformer takes the model's input frame or its column arrays")
        return np.hstack([block(np.column_stack([arrays[c] for c in cols])) for cols, block in parts])

    return transform


def _build_impute(plan: Plan) -> Block:
    keep = np.asarray(plan["keep"], dtype=bool)
    fill = np.asarray(plan["fill"], dtype=np.float64)

    def numeric(data: Any) -> np.ndarray[Any, Any]:
        x = np.array(data, dtype=np.float64)[:, keep]
        missing = np.isnan(x)
        if missing.any():
            x[missing] = np.broadcast_to(fill, x.shape)[missing]
        return x

    return numeric


def _build_impute_text(plan: Plan) -> Block:
    value = str(plan["value"])

    def text(data: Any) -> np.ndarray[Any, Any]:
        x = np.array(data, dtype=object)
        x[x != x] = value  # NaN is the one missing marker (None is a value), as scikit-learn masks it
        return x

    return text


def _lookup(categories: Sequence[Sequence[Any]]) -> list[dict[Any, int]]:
    return [{v: i for i, v in enumerate(values)} for values in categories]


def _build_ordinal(plan: Plan) -> Block:
    tables = _lookup(plan["categories"])
    unknown = float(plan["unknown"])
    dtype = np.dtype(plan["dtype"])

    def encode(data: Any) -> np.ndarray[Any, Any]:
        x = np.asarray(data, dtype=object)
        out = np.empty(x.shape, dtype=dtype)
        for j, table in enumerate(tables):
            out[:, j] = [table.get(v, unknown) for v in x[:, j].tolist()]
        return out

    return encode


def _build_one_hot(plan: Plan) -> Block:
    tables = _lookup(plan["categories"])
    dtype = np.dtype(plan["dtype"])
    offsets = np.cumsum([0, *(len(t) for t in tables)])

    def encode(data: Any) -> np.ndarray[Any, Any]:
        x = np.asarray(data, dtype=object)
        out = np.zeros((x.shape[0], int(offsets[-1])), dtype=dtype)
        for j, table in enumerate(tables):
            for i, v in enumerate(x[:, j].tolist()):
                k = table.get(v)
                if k is not None:
                    out[i, offsets[j] + k] = 1
        return out

    return encode


def _build_scale(plan: Plan) -> Block:
    mean = None if plan["mean"] is None else np.asarray(plan["mean"], dtype=np.float64)
    scale = None if plan["scale"] is None else np.asarray(plan["scale"], dtype=np.float64)

    def standardize(data: Any) -> np.ndarray[Any, Any]:
        x = np.array(data, dtype=np.float64)
        if mean is not None:
            x -= mean
        if scale is not None:
            x /= scale
        return x

    return standardize


_BUILDERS: dict[str, Callable[[Plan], Block]] = {
    "passthrough": lambda plan: np.asarray,
    "chain": _build_chain,
    "columns": _build_columns,
    "impute": _build_impute,
    "impute_text": _build_impute_text,
    "ordinal": _build_ordinal,
    "one_hot": _build_one_hot,
    "scale": _build_scale,
}
