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

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: A compiled step: a block of the frame (or the previous step's array) -> the step's output.
Block = Callable[[Any], np.ndarray[Any, Any]]
#: The whole preprocessing: the model's input frame, or its columns as ``FeatureSchema.arrays`` gives
#: them -> what the final estimator takes.
Prepare = Callable[[pd.DataFrame | Mapping[str, np.ndarray[Any, Any]]], np.ndarray[Any, Any]]


def compile_preprocessing(model: Any) -> Prepare | None:
    """The steps of ``model`` (a fitted ``Pipeline``) before its final estimator, compiled; None if any is unknown."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) < 2:
        return None
    return _chain([step for _, step in steps[:-1]])


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
class CompiledTrees:
    """A fitted ``HistGradientBoosting{Classifier,Regressor}`` walked for every row and tree at once.

    scikit-learn calls each tree's predictor in turn (100 calls for 100 iterations, each with
    its input checks and thread set-up): 0.7 ms for a batch of a few rows. Here the trees are
    one set of node arrays (a leaf points at itself), and one step moves every (row, tree)
    pair down one level: ``depth`` steps of a few array operations. A node's rule is
    scikit-learn's: a missing value goes the side the node learned, else ``x <= threshold``
    goes left. The leaf values are added tree after tree onto the baseline, as scikit-learn
    adds them (``np.cumsum`` adds in order), so the sums are the same to the last bit, and the
    estimator's own loss turns them into probabilities or values.
    """

    def __init__(self, estimator: Any, nodes: Sequence[np.ndarray[Any, Any]]) -> None:
        self.estimator = estimator
        self.n_features = int(estimator.n_features_in_)
        self.k = int(estimator.n_trees_per_iteration_)
        self.baseline = 0.0 + np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
        offsets = np.cumsum([0, *(len(n) for n in nodes)])
        every = np.concatenate(nodes)
        leaf = every["is_leaf"].astype(bool)
        own = np.arange(len(every))
        self.roots = offsets[:-1].astype(np.intp)
        self.feature = np.where(leaf, 0, every["feature_idx"]).astype(np.intp)
        self.threshold = np.where(leaf, np.inf, every["num_threshold"]).astype(np.float64)
        self.missing_left = np.where(leaf, True, every["missing_go_to_left"].astype(bool))
        tree_of = np.repeat(np.arange(len(nodes)), [len(n) for n in nodes])
        self.left = np.where(leaf, own, offsets[tree_of] + every["left"]).astype(np.intp)
        self.right = np.where(leaf, own, offsets[tree_of] + every["right"]).astype(np.intp)
        self.value = every["value"].astype(np.float64)
        self.depth = int(every["depth"].max())
        self.splits = np.unique(np.stack([every["feature_idx"][~leaf], every["num_threshold"][~leaf]], axis=1), axis=0)

    def raw(self, x: Any) -> np.ndarray[Any, Any]:
        """What the estimator's ``_raw_predict`` gives: the baseline plus each tree's leaf, per row and output."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"X has shape {x.shape}; the trees take {self.n_features} features")
        rows = np.arange(x.shape[0])[:, None]
        at = np.broadcast_to(self.roots, (x.shape[0], len(self.roots)))
        for _ in range(self.depth):
            seen = x[rows, self.feature[at]]
            go_left = np.where(np.isnan(seen), self.missing_left[at], seen <= self.threshold[at])
            at = np.where(go_left, self.left[at], self.right[at])
        leaves = self.value[at].reshape(x.shape[0], -1, self.k)
        summed = np.concatenate([np.broadcast_to(self.baseline, (x.shape[0], 1, self.k)), leaves], axis=1)
        return np.asfortranarray(np.cumsum(summed, axis=1)[:, -1, :])

    def predict_proba(self, x: Any) -> np.ndarray[Any, Any]:
        return np.asarray(self.estimator._loss.predict_proba(self.raw(x)))

    def predict(self, x: Any) -> np.ndarray[Any, Any]:
        if hasattr(self.estimator, "classes_"):
            return np.asarray(self.estimator.classes_[np.argmax(self.predict_proba(x), axis=1)])
        return np.asarray(self.estimator._loss.link.inverse(self.raw(x).ravel()))


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
    return CompiledTrees(estimator, nodes)


def trees_verified(trees: CompiledTrees, x: np.ndarray[Any, Any]) -> bool:
    """Whether ``trees`` answer exactly as their estimator on ``x`` and on every split's edge.

    The edges: for each distinct (feature, threshold) of the trees, ``x``'s first row with that
    feature at the threshold and just above it, and with each feature missing. On ``x`` and the
    edges the raw scores must be equal (both sides turn them into values and probabilities with
    the estimator's own loss), and on ``x`` the values and probabilities too. Comparing the
    public outputs on the edges as well walked the trees twice more over thousands of rows:
    0.12 s of a 100-tree model's load instead of 0.06 s.
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
    estimator = trees.estimator
    try:
        pairs = [(trees.raw(probe), np.asarray(estimator._raw_predict(probe)))]
        pairs.append((trees.predict(x), estimator.predict(x)))
        if hasattr(estimator, "predict_proba"):
            pairs.append((trees.predict_proba(x), estimator.predict_proba(x)))
    except Exception as exc:  # noqa: BLE001 - a probe either side refuses: not proven equal
        logger.info("compiled trees not used: the probe failed: %s: %s", type(exc).__name__, exc)
        return False
    same = all(got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True) for got, want in pairs)
    if not same:
        logger.info("compiled trees not used: they differ from scikit-learn's on %d probe rows", len(probe))
    return same


# -- steps ---------------------------------------------------------------------------
def _step(step: Any) -> Block | None:
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return np.asarray
    if _output_config(step) not in (None, "default"):
        return None
    kind = type(step).__name__
    module = type(step).__module__
    if not module.startswith("sklearn."):
        return None
    if kind == "Pipeline":
        return _chain([s for _, s in step.steps])
    builder = _BUILDERS.get(kind)
    return builder(step) if builder is not None else None


def _chain(steps: Sequence[Any]) -> Block | None:
    """``steps`` one after the other (None: one of them does not compile)."""
    compiled = [_step(step) for step in steps]
    blocks = [b for b in compiled if b is not None]
    if len(blocks) < len(compiled):
        return None

    def chained(data: Any) -> np.ndarray[Any, Any]:
        for block in blocks:
            data = block(data)
        return np.asarray(data)

    return chained


def _output_config(step: Any) -> str | None:
    config = getattr(step, "_sklearn_output_config", None) or {}
    return config.get("transform") if isinstance(config, dict) else None


def _column_transformer(ct: Any) -> Block | None:
    if getattr(ct, "sparse_output_", True):
        return None
    names = list(getattr(ct, "feature_names_in_", []))
    parts: list[tuple[list[str], Block]] = []
    for _, trans, cols in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        selected = _columns(cols, names)
        if selected is None:
            return None
        if not selected:
            continue
        block = _step(trans)
        if block is None:
            return None
        parts.append((selected, block))
    if not parts:
        return None

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


def _imputer(imputer: Any) -> Block | None:
    if getattr(imputer, "add_indicator", False) or not _is_nan(imputer.missing_values):
        return None
    stats = np.asarray(imputer.statistics_)
    strategy = imputer.strategy
    if strategy in ("mean", "median"):
        keep = np.ones(len(stats), dtype=bool) if imputer.keep_empty_features else ~np.isnan(stats.astype(float))
        fill = stats[keep].astype(np.float64)

        def numeric(data: Any) -> np.ndarray[Any, Any]:
            x = np.array(data, dtype=np.float64)[:, keep]
            missing = np.isnan(x)
            if missing.any():
                x[missing] = np.broadcast_to(fill, x.shape)[missing]
            return x

        return numeric
    if strategy == "constant" and isinstance(imputer.fill_value, str):
        value = imputer.fill_value

        def text(data: Any) -> np.ndarray[Any, Any]:
            x = np.array(data, dtype=object)
            x[x != x] = value  # NaN is the one missing marker (None is a value), as scikit-learn masks it
            return x

        return text
    return None


def _lookup(categories: Sequence[np.ndarray[Any, Any]]) -> list[dict[Any, int]] | None:
    """Category -> index per column (None: a category is missing or not a plain value)."""
    tables = []
    for cats in categories:
        values = cats.tolist()
        if any(v is None or (isinstance(v, float) and v != v) for v in values):
            return None
        tables.append({v: i for i, v in enumerate(values)})
    return tables


def _ordinal(encoder: Any) -> Block | None:
    tables = _lookup(encoder.categories_)
    if tables is None or getattr(encoder, "_infrequent_enabled", False):
        return None
    if encoder.handle_unknown == "use_encoded_value":
        unknown = float(encoder.unknown_value)
    else:
        return None
    dtype = np.dtype(encoder.dtype)

    def encode(data: Any) -> np.ndarray[Any, Any]:
        x = np.asarray(data, dtype=object)
        out = np.empty(x.shape, dtype=dtype)
        for j, table in enumerate(tables):
            out[:, j] = [table.get(v, unknown) for v in x[:, j].tolist()]
        return out

    return encode


def _one_hot(encoder: Any) -> Block | None:
    tables = _lookup(encoder.categories_)
    if (
        tables is None
        or getattr(encoder, "drop_idx_", None) is not None
        or getattr(encoder, "_infrequent_enabled", False)
        or encoder.handle_unknown not in ("ignore", "infrequent_if_exist")
    ):
        return None
    dtype = np.dtype(encoder.dtype)
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


def _scaler(scaler: Any) -> Block | None:
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None

    def standardize(data: Any) -> np.ndarray[Any, Any]:
        x = np.array(data, dtype=np.float64)
        if mean is not None:
            x -= mean
        if scale is not None:
            x /= scale
        return x

    return standardize


def _identity(function: Any) -> Block | None:
    """A ``FunctionTransformer`` without a function: how a fitted ``ColumnTransformer`` keeps ``"passthrough"``."""
    if function.func is not None or function.validate:
        return None
    return np.asarray


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


_BUILDERS: dict[str, Callable[[Any], Block | None]] = {
    "ColumnTransformer": _column_transformer,
    "SimpleImputer": _imputer,
    "OrdinalEncoder": _ordinal,
    "OneHotEncoder": _one_hot,
    "StandardScaler": _scaler,
    "FunctionTransformer": _identity,
}
