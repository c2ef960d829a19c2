"""The compiled preprocessing gives what scikit-learn's gives, or is not used."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from flows.pipeline.stages.train import build_model
from serving.compiled import (
    CompiledModel,
    CompiledTrees,
    compile_estimator,
    compile_preprocessing,
    describe_preprocessing,
    probe_columns,
    trees_verified,
    verified,
)
from serving.schema import Column, FeatureSchema

SCHEMA = FeatureSchema(
    [Column("amount", "double"), Column("visits", "long"), Column("channel", "string"), Column("seen", "double")]
)
CHANNELS = ["pos", "online", "atm"]


def _training(rows: int = 400, seed: int = 0, missing: float = 0.1) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    amount = rng.normal(50, 10, rows)
    amount[rng.random(rows) < missing] = np.nan
    channel = rng.choice([*CHANNELS, None], size=rows, p=[(1 - missing) / 3] * 3 + [missing])
    columns = {
        "amount": amount.tolist(),
        "visits": rng.integers(0, 30, rows).tolist(),
        "channel": channel.tolist(),
        "seen": rng.random(rows).tolist(),
    }
    y = ((np.nan_to_num(amount, nan=50) > 52) ^ (channel == "atm")).astype(int)
    return SCHEMA.frame(columns), y


def _imputer_ordinal() -> Pipeline:
    schema = {"amount": "float64", "visits": "int64", "channel": "string", "seen": "float64", "y": "int64"}
    return build_model(schema, "y", [], HistGradientBoostingClassifier(max_iter=20, random_state=0))


def _one_hot_scaler() -> Pipeline:
    pre = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["channel"]), ("num", StandardScaler(), ["amount", "seen"])],
        remainder="passthrough",
    )
    return Pipeline([("pre", pre), ("model", HistGradientBoostingClassifier(max_iter=20, random_state=0))])


#: Each with the training rows it is fitted on: the imputer's with missing values, the one-hot
#: encoder's without (a category that is missing is one this compiler leaves to scikit-learn).
MODELS = {
    "imputer+ordinal (the pipeline's)": (_imputer_ordinal, 0.1),
    "one-hot+scaler+passthrough": (_one_hot_scaler, 0.0),
}

_value = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))
_rows = st.lists(
    st.fixed_dictionaries(
        {
            "amount": _value,
            "visits": st.integers(0, 10**6),
            "channel": st.one_of(st.none(), st.sampled_from([*CHANNELS, "new", ""])),
            "seen": _value,
        }
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request: pytest.FixtureRequest) -> Pipeline:
    make, missing = MODELS[request.param]
    frame, y = _training(missing=missing)
    return make().fit(frame, y)


@settings(max_examples=60, deadline=None)
@given(rows=_rows)
def test_the_compiled_steps_give_what_scikit_learn_gives_on_any_rows(fitted: Pipeline, rows: list[dict]) -> None:
    prepare = compile_preprocessing(fitted)
    assert prepare is not None
    frame = SCHEMA.frame({name: [r[name] for r in rows] for name in SCHEMA.names})
    expected = fitted[:-1].transform(frame)
    got = prepare(frame)
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(fitted[-1].predict_proba(got), fitted.predict_proba(frame))
    # The server's path: the columns as arrays, no frame.
    arrays = prepare(SCHEMA.arrays({name: [r[name] for r in rows] for name in SCHEMA.names}))
    assert arrays.dtype == expected.dtype and np.array_equal(arrays, expected, equal_nan=True)


def test_the_probe_rows_take_every_branch(fitted: Pipeline) -> None:
    example = {"amount": [51.0, 40.0], "visits": [3, 4], "channel": ["pos", "atm"], "seen": [0.1, 0.9]}
    columns = probe_columns(example, text=["channel"])
    assert len(columns["amount"]) == 2 * (1 + 4 + 1)  # as given, each column missing, channel unknown
    probe = SCHEMA.frame(columns)
    prepare = compile_preprocessing(fitted)
    assert prepare is not None and verified(prepare, fitted, probe)


def test_a_step_it_does_not_know_is_left_to_scikit_learn() -> None:
    frame, y = _training()
    pre = ColumnTransformer([("log", FunctionTransformer(np.log1p), ["seen"])])
    model = Pipeline([("pre", pre), ("model", HistGradientBoostingClassifier(max_iter=5))])
    assert compile_preprocessing(model.fit(frame, y)) is None
    # A one-hot encoder that learned a missing value as a category: left to scikit-learn too.
    assert compile_preprocessing(_one_hot_scaler().fit(frame, y)) is None


def test_a_compiled_step_that_differs_is_not_verified(fitted: Pipeline) -> None:
    """``verified`` is what keeps a wrong compilation out: a step off by one value fails it."""
    prepare = compile_preprocessing(fitted)
    assert prepare is not None
    frame, _ = _training(rows=20, seed=1)

    def off_by_one(data: pd.DataFrame) -> np.ndarray[Any, Any]:
        out = prepare(data).copy()
        out[0, 0] += 1e-12
        return out

    assert verified(prepare, fitted, frame)
    assert not verified(off_by_one, fitted, frame)


def test_a_loaded_model_predicts_through_the_compiled_steps_only_once_verified(fitted: Pipeline) -> None:
    from serving.model import LoadedModel
    from serving.registry import ModelVersionRef

    frame, _ = _training(rows=50, seed=3, missing=0.0)
    model = LoadedModel(ModelVersionRef("m", "1"), fitted, SCHEMA, example=frame.head(5))
    try:
        assert not model.compiled  # not before its warm-up verified it
        model.warm_up()
        assert model.compiled and model.compiled_trees
        rows, _ = _training(rows=200, seed=4)
        columns = {name: rows[name].tolist() for name in SCHEMA.names}
        for rows_in_batch in (5, 200):  # the compiled trees, then scikit-learn's predictors
            batch = {name: values[:rows_in_batch] for name, values in columns.items()}
            got = model.predict(batch)
            assert got.scores is not None
            assert np.array_equal(got.scores, fitted.predict_proba(SCHEMA.frame(batch))[:, 1])
    finally:
        model.close()
    unverifiable = LoadedModel(ModelVersionRef("m", "2"), fitted, SCHEMA, example=None)
    unverifiable.warm_up()
    assert not unverifiable.compiled  # no example, no probe: scikit-learn's path
    unverifiable.close()


def test_a_small_compiled_batch_is_predicted_on_the_event_loop_and_any_other_in_a_model_thread(
    fitted: Pipeline,
) -> None:
    """The compiled walk cannot hang, so it skips the thread hand-off; scikit-learn's own code never does."""
    from serving.breaker import BreakerPolicy
    from serving.model import LoadedModel
    from serving.predictor import Predictor
    from serving.registry import ModelVersionRef
    from serving.reload import ModelSet

    frame, _ = _training(rows=50, seed=3, missing=0.0)
    rows, _ = _training(rows=200, seed=4)
    columns = {name: rows[name].tolist() for name in SCHEMA.names}
    compiled = LoadedModel(ModelVersionRef("m", "1"), fitted, SCHEMA, example=frame.head(5))
    not_compiled = LoadedModel(ModelVersionRef("m", "2"), fitted, SCHEMA, example=None)  # no probe rows
    calls: list[tuple[str, int, int]] = []  # (version, rows, thread) of each model call
    for model in (compiled, not_compiled):
        model.warm_up()
        answer = model._answer

        def recording(estimator: Any, x: Any, answer: Any = answer, version: str = model.version) -> Any:
            calls.append((version, len(x), threading.get_ident()))
            return answer(estimator, x)

        model._answer = recording  # type: ignore[method-assign]

    async def scenario() -> int:
        predictor = Predictor(BreakerPolicy())
        for model, size in ((compiled, 5), (compiled, 200), (not_compiled, 5)):
            batch = {name: values[:size] for name, values in columns.items()}
            outcome = await predictor.predict(ModelSet(primary=model), batch)
            assert outcome.served_by == "primary" and len(outcome.prediction) == size
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(scenario())
    finally:
        compiled.close()
        not_compiled.close()
    assert [(version, size) for version, size, _ in calls] == [("1", 5), ("1", 200), ("2", 5)]
    assert [thread == loop_thread for _, _, thread in calls] == [True, False, False]


def test_a_version_started_compiled_walks_any_batch_inline_until_its_model_has_loaded(fitted: Pipeline) -> None:
    """Without scikit-learn's model every batch is the walk's; once it has loaded, a large batch is the model's."""
    from serving.compiled import CompiledModel
    from serving.model import TREE_WALK_MAX_ROWS, LoadedModel
    from serving.registry import ModelVersionRef

    frame, _ = _training(rows=50, seed=3, missing=0.0)
    first = LoadedModel(ModelVersionRef("m", "1"), fitted, SCHEMA, example=frame.head(5))
    first.warm_up()
    data = first.compiled_form()
    first.close()
    assert data is not None
    started = LoadedModel(
        ModelVersionRef("m", "1"),
        None,
        SCHEMA,
        frame.head(5),
        compiled=CompiledModel.from_bytes(data),
        load_model=lambda: fitted,
    )
    rows, _ = _training(rows=TREE_WALK_MAX_ROWS + 36, seed=4)
    large = {name: rows[name].tolist() for name in SCHEMA.names}
    small = {name: values[:5] for name, values in large.items()}
    try:
        walked = started.predict_inline(large)
        assert walked is not None and walked.scores is not None
        assert np.array_equal(walked.scores, fitted.predict_proba(SCHEMA.frame(large))[:, 1])
        started.model  # noqa: B018 - loads scikit-learn's model now, as the background load does
        assert started.predict_inline(large) is None  # scikit-learn's predictors, in a model thread
        assert started.predict_inline(small) is not None
    finally:
        started.close()


# -- the trees ---------------------------------------------------------------------------------
def _tree_data(seed: int = 0, rows: int = 600) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values: each split learns where they go
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) ** 2 - np.isnan(x[:, 2])
    return x, signal


def _estimators() -> dict[str, Any]:
    x, signal = _tree_data()
    return {
        "binary": HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, (signal > 0.5).astype(int)),
        "multiclass": HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(x, np.digitize(signal, [0, 1])),
        "regression": HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(x, signal),
    }


ESTIMATORS = _estimators()
_cells = st.one_of(
    st.floats(-4, 4, allow_nan=False), st.just(float("nan")), st.sampled_from([float("inf"), -float("inf"), 0.0])
)


@settings(max_examples=60, deadline=None)
@given(cells=st.lists(st.lists(_cells, min_size=5, max_size=5), min_size=1, max_size=30), exact=st.data())
def test_compiled_trees_answer_what_scikit_learn_answers_on_any_rows(cells: list[list[float]], exact: Any) -> None:
    for name, estimator in ESTIMATORS.items():
        trees = compile_estimator(estimator)
        assert trees is not None, name
        x = np.array(cells, dtype=np.float64)
        # Some cells exactly on a split's threshold: the side `<=` sends them is the one that matters.
        feature, threshold = trees.splits[exact.draw(st.integers(0, len(trees.splits) - 1))]
        x[0, int(feature)] = threshold
        assert np.array_equal(trees.predict(x), estimator.predict(x)), name
        if name != "regression":
            assert np.array_equal(trees.predict_proba(x), estimator.predict_proba(x)), name


def test_trees_it_cannot_compile_are_left_to_scikit_learn() -> None:
    x, signal = _tree_data()
    x[:, 3] = np.random.default_rng(1).integers(0, 4, len(x))
    categorical = HistGradientBoostingClassifier(max_iter=5, categorical_features=[3]).fit(x, signal > 0.5)
    assert compile_estimator(categorical) is None
    assert compile_estimator(LogisticRegression().fit(np.nan_to_num(x), signal > 0.5)) is None


def test_trees_that_differ_are_not_verified() -> None:
    """``trees_verified`` probes every split's edge: one threshold nudged to the next float fails it."""
    estimator = ESTIMATORS["binary"]
    x, _ = _tree_data(seed=2, rows=5)
    trees = compile_estimator(estimator)
    assert trees is not None and trees_verified(trees, estimator, x)
    nudged = compile_estimator(estimator)
    assert isinstance(nudged, CompiledTrees)
    split = int(np.flatnonzero(np.isfinite(nudged.threshold))[0])
    nudged.threshold[split] = np.nextafter(nudged.threshold[split], -np.inf)
    assert not trees_verified(nudged, estimator, x)


# -- the compiled form, stored ------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(rows=_rows)
def test_a_stored_compiled_model_answers_what_scikit_learn_answers(fitted: Pipeline, rows: list[dict]) -> None:
    """Written as bytes and read back (what a restart serves from), the form still gives scikit-learn's answers."""
    plan, trees = describe_preprocessing(fitted), compile_estimator(fitted[-1])
    assert plan is not None and trees is not None
    back = CompiledModel.from_bytes(CompiledModel(plan, trees).to_bytes())
    columns = {name: [row[name] for row in rows] for name in SCHEMA.names}
    expected = fitted.predict_proba(SCHEMA.frame(columns))
    got = back.trees.predict_proba(back.prepare(SCHEMA.arrays(columns)))
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert np.array_equal(
        back.trees.predict(back.prepare(SCHEMA.arrays(columns))), fitted.predict(SCHEMA.frame(columns))
    )


def test_stored_trees_of_every_kind_read_back_equal() -> None:
    """Binary, multiclass (classes of every dtype) and regression trees: the same outputs after the round trip."""
    x, signal = _tree_data(seed=5, rows=300)
    bands = np.digitize(signal, [0, 1])
    estimators = {
        **ESTIMATORS,
        "strings": HistGradientBoostingClassifier(max_iter=10).fit(x, np.array(["low", "mid", "high"])[bands]),
        "objects": HistGradientBoostingClassifier(max_iter=10).fit(
            x, np.array(["no", "yes"], dtype=object)[(bands > 0).astype(int)]
        ),
        "int32": HistGradientBoostingClassifier(max_iter=10).fit(x, bands.astype(np.int32)),
        "float32": HistGradientBoostingClassifier(max_iter=10).fit(x, bands.astype(np.float32)),
        "bool": HistGradientBoostingClassifier(max_iter=10).fit(x, bands > 0),
    }
    for name, estimator in estimators.items():
        trees = compile_estimator(estimator)
        assert trees is not None, name
        back = CompiledModel.from_bytes(CompiledModel({"kind": "passthrough"}, trees).to_bytes()).trees
        assert np.array_equal(back.predict(x), estimator.predict(x)), name
        assert back.predict(x).dtype == estimator.predict(x).dtype, name
        assert trees_verified(back, estimator, x), name
        if name != "regression":
            assert np.array_equal(back.predict_proba(x), estimator.predict_proba(x)), name


def test_damaged_compiled_bytes_are_refused() -> None:
    """Anything but an intact archive (cut short, pickled, an unknown link, nodes out of range): ValueError."""
    trees = compile_estimator(ESTIMATORS["binary"])
    assert trees is not None
    data = CompiledModel({"kind": "passthrough"}, trees).to_bytes()
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array([{"a": 1}], dtype=object))  # loading it would need pickle
    bad_left = trees.arrays() | {"left": trees.left + len(trees.left)}
    meta = b'{"format": 1, "plan": {"kind": "passthrough"}, "link": "logit", "classes": null, '
    meta += b'"sklearn_version": "1", "reviewed_types": []}'
    assert CompiledModel.from_bytes(_archive(meta, trees.arrays())).sklearn_version == "1"  # the meta is valid
    wrong = _archive(meta, bad_left)
    for damaged in (data[: len(data) // 2], b"not an archive", buffer.getvalue(), wrong):
        with pytest.raises(ValueError):
            CompiledModel.from_bytes(damaged)
    with pytest.raises(ValueError):
        CompiledTrees(trees.arrays(), "magic", None)


def _archive(meta: bytes, arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(meta, np.uint8), **arrays)
    return buffer.getvalue()
