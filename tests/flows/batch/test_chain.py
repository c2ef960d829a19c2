"""Batch scoring's fallback chain against a real registry and lake: the server's chain, chunk by chunk.

One MLflow store holds two versions: the first promoted, then the second (so the first is
``@previous``). ``load_chain`` loads them as the batch CLI does; the champion's prediction
call is then made to raise on one chunk (``MemoryError``, as a model out of memory), and
once the fallback's too. The tables are counted directly (Arrow reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pytest
import yaml

from checkpoints import Lake
from flows.batch import delivery
from flows.batch.chain import ScoringChain
from flows.batch.inputs import Source, read
from flows.batch.scoring import PREDICTIONS
from flows.config import load_config
from tests.flows.batch.test_delivery import (
    CHUNK,
    MODEL,
    _dlq_states,
    _predicted_rows,
    _rows_of,
    _transactions,
    _write,
    register_version,
)


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    from flows.registry import Registry

    root = tmp_path_factory.mktemp("chain-registry")
    uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"
    registry = Registry(uri, MODEL, artifact_root=str(artifacts))
    registry.promote(register_version(uri, artifacts, seed=7))
    registry.promote(register_version(uri, artifacts, seed=8))  # the first becomes @previous
    return uri, artifacts


@pytest.fixture
def chain(registry_uri: tuple[str, Path], tmp_path: Path) -> Iterator[ScoringChain]:
    from flows.batch.champion import load_chain

    uri, artifacts = registry_uri
    path = tmp_path / "selfheal.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name": MODEL,
                "home": str(tmp_path / "home"),
                "tracking_uri": uri,
                "artifact_root": str(artifacts),
                "lake": {"root": str(tmp_path / "lake")},
                "data": {"target": "is_fraud", "time_column": "event_time", "id_columns": ["transaction_id"]},
            }
        )
    )
    loaded = load_chain(load_config(str(path), check_estimator=False))
    yield loaded
    loaded.close()


def _fail_calls(monkeypatch: pytest.MonkeyPatch, model: Any, calls: set[int]) -> list[int]:
    """Make ``model``'s prediction raise on the given calls (1-based); returns the sizes of every call."""
    predict, seen = model.predict_frame, []

    def failing(frame: pd.DataFrame) -> Any:
        seen.append(len(frame))
        if len(seen) in calls:
            raise MemoryError(f"version {model.version} ran out of memory")
        return predict(frame)

    monkeypatch.setattr(model, "predict_frame", failing)
    return seen


def _answered(lake: Lake, sha: str) -> dict[int, tuple[str, str]]:
    """Row -> (_model_version, _served_by) of its prediction, read straight from the table."""
    table = lake.read(PREDICTIONS, columns=["_input_version", "_row", "_model_version", "_served_by"])
    table = table.filter(pc.equal(table.column("_input_version"), sha))
    return {r["_row"]: (r["_model_version"], r["_served_by"]) for r in table.to_pylist()}


def test_a_chunk_the_champion_fails_on_is_answered_by_previous_and_says_so(
    chain: ScoringChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert chain.models.primary is not None and chain.models.fallback is not None
    champion, previous = chain.models.primary.version, chain.models.fallback.version
    assert (champion, previous) == ("2", "1")
    lake = Lake(tmp_path / "lake")
    frame = _transactions(9, 600)
    frame["amount"] = frame["amount"].map(repr).astype(object)
    frame.loc[[250, 520], "amount"] = "n/a"  # refused by the contract: no model of the chain may take them
    path = _write(tmp_path / "in" / "batch.parquet", frame)
    calls = _fail_calls(monkeypatch, chain.models.primary, calls={2})

    done = delivery.score_source(lake, chain, Source("file", str(path)), PREDICTIONS, chunk_rows=CHUNK)

    sha = read(lake, Source("file", str(path))).version  # type: ignore[union-attr]
    assert len(calls) == 3
    landed = _predicted_rows(lake, sha)
    assert landed == sorted(set(range(600)) - {250, 520})  # each row once
    answered = _answered(lake, sha)
    assert {row for row, by in answered.items() if by == (previous, "fallback")} == set(range(200, 400)) - {250}
    assert {row for row, by in answered.items() if by == (champion, "primary")} == set(range(600)) - set(
        range(200, 400)
    ) - {520}
    states = _rows_of(_dlq_states(lake), sha)
    assert {row: state[1].split(":")[0] for row, state in states.items()} == {250: "amount", 520: "amount"}
    assert (done.landed, done.dead_lettered) == (598, {"invalid": 2})


def test_the_baseline_answers_when_champion_and_previous_both_fail(
    chain: ScoringChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert chain.models.primary is not None and chain.models.fallback is not None
    assert chain.models.baseline is not None
    lake = Lake(tmp_path / "lake")
    path = _write(tmp_path / "in" / "batch.parquet", _transactions(10, 300))
    _fail_calls(monkeypatch, chain.models.primary, calls={1})
    _fail_calls(monkeypatch, chain.models.fallback, calls={1})

    done = delivery.score_source(lake, chain, Source("file", str(path)), PREDICTIONS, chunk_rows=CHUNK)

    sha = read(lake, Source("file", str(path))).version  # type: ignore[union-attr]
    answered = _answered(lake, sha)
    assert {row for row, (_, by) in answered.items() if by == "baseline"} == set(range(200))
    assert {by for row, (_, by) in answered.items() if row >= 200} == {"primary"}
    assert done.landed == 300 and not done.dead_lettered and not _dlq_states(lake)
