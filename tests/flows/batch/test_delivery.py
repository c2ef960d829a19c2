"""Batch scoring against a real lake and a real MLflow registry: every row lands once or waits in the DLQ.

One MLflow store (SQLite, local artifacts) holds a champion trained on the demo fraud
stream (HistGradientBoosting, 20 iterations: seconds to fit); each test scores into a
fresh lake. Faults: the lake's call of delta-rs's writer raises for one chunk's
predictions as a full disk would (``OSError``, the writer swapped for one that fails on
that call), the model raises on one chunk, a replay is killed after its commit and
before it records it. The tables are then counted directly (Arrow reads of
``predictions`` and ``dlq``), not through the code under test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from checkpoints import Lake
from checkpoints.dlq import DLQ, DeadLetterQueue
from flows.batch import delivery
from flows.batch.inputs import Source, read, resolve
from flows.batch.scoring import PREDICTIONS
from flows.cli import main
from flows.demo.data import encode, generate_batch
from serving.model import LoadedModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "batch-fraud"
CHUNK = 200


@dataclass(frozen=True)
class Store:
    """The shared registry: where it is, and its champion loaded once."""

    root: Path
    tracking_uri: str
    artifact_root: Path
    model: LoadedModel

    def config(self, tmp_path: Path) -> Path:
        """A selfheal.yaml for this registry with a lake (and landing zone) of its own under ``tmp_path``."""
        path = tmp_path / "selfheal.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "model_name": MODEL,
                    "home": str(tmp_path / "home"),
                    "tracking_uri": self.tracking_uri,
                    "artifact_root": str(self.artifact_root),
                    "lake": {"root": str(tmp_path / "lake")},
                    "landing": {"path": str(tmp_path / "landing"), "settle_seconds": 0},
                    "data": {"target": "is_fraud", "time_column": "event_time", "id_columns": ["transaction_id"]},
                }
            )
        )
        return path


def register_version(uri: str, artifacts: Path, seed: int = 7) -> str:
    """Fit the demo model on a batch of the fraud stream, register it as a new version of ``MODEL``; its version."""
    import mlflow

    from flows.config import DataConfig, TrainerConfig
    from flows.pipeline.stages.train import build_model, make_estimator
    from flows.pipeline.stages.validate import infer_schema
    from serving.modelio import log_sklearn_model, mlflow_uris

    frame = generate_batch(0, rows=2000, seed=seed)
    data = DataConfig(target="is_fraud", time_column="event_time", id_columns=["transaction_id"])
    schema = infer_schema(frame, data)
    estimator = make_estimator(TrainerConfig(params={"max_iter": 20}), "binary")
    model = build_model(schema, "is_fraud", ["transaction_id"], estimator).fit(frame[list(schema)], frame["is_fraud"])
    with mlflow_uris(uri):
        found = mlflow.get_experiment_by_name("batch")
        experiment = found.experiment_id if found else mlflow.create_experiment("batch", str(artifacts))
        with mlflow.start_run(experiment_id=experiment):
            info = log_sklearn_model(model, frame[list(schema)].head(5), registered_model_name=MODEL)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    yield from make_store(tmp_path_factory)


def make_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A registry with one champion, loaded (the ``store`` fixture; other test modules make their own)."""
    from flows.registry import CHAMPION, Registry
    from serving.model import ModelThreads

    root = tmp_path_factory.mktemp("batch-registry")
    uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"
    registry = Registry(uri, MODEL, artifact_root=str(artifacts))
    registry.promote(register_version(uri, artifacts))
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    loaded = LoadedModel.load(registry, champion, ModelThreads(pool=1))
    yield Store(root, uri, artifacts, loaded)
    loaded.close()


@pytest.fixture
def cli(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``selfheal`` in this process on a config of this test's own, at this process's priority.

    ``score`` lowers its process to nice 19 (background work); here that process is the test
    runner, which must keep its priority for the tests after this one.
    """
    import serving.processes

    monkeypatch.setenv("SELFHEAL_CONFIG", str(store.config(tmp_path)))
    monkeypatch.setattr(serving.processes, "yield_cpu", lambda pid=None: True)


def _transactions(index: int, rows: int) -> pd.DataFrame:
    return generate_batch(index, rows=rows, seed=11)


def _write(path: Path, frame: pd.DataFrame, fmt: str = "parquet") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(frame, fmt))
    return path


def _predicted_rows(lake: Lake, input_version: str, output: str = PREDICTIONS) -> list[int]:
    """``_row`` of every prediction of one input version, duplicates included (read straight from the table)."""
    if not lake.exists(output):
        return []
    rows = lake.read(output, columns=["_input_version", "_row"])
    return sorted(rows.filter(pc.equal(rows.column("_input_version"), input_version)).column("_row").to_pylist())


def _dlq_states(lake: Lake) -> dict[tuple[str, int], tuple[str, str]]:
    """(input version, row) -> (status, reason) of its newest event in the DLQ table (read straight from it)."""
    if not lake.exists(DLQ):
        return {}
    newest: dict[tuple[str, int], tuple[int, str, str]] = {}
    for event in lake.read(DLQ, columns=["input_version", "row", "attempt", "status", "reason"]).to_pylist():
        key = (event["input_version"], event["row"])
        seen = newest.get(key)
        if seen is None or event["attempt"] > seen[0]:
            newest[key] = (event["attempt"], event["status"], event["reason"])
    return {key: (status, reason) for key, (_, status, reason) in newest.items()}


def _rows_of(states: dict[tuple[str, int], tuple[str, str]], input_version: str) -> dict[int, tuple[str, str]]:
    return {row: state for (version, row), state in states.items() if version == input_version}


def _waiting(lake: Lake) -> set[tuple[str, int]]:
    return {key for key, (status, _) in _dlq_states(lake).items() if status != "replayed"}


def _fail_writes(monkeypatch: pytest.MonkeyPatch, table: str, calls: set[int]) -> list[int]:
    """Make delta-rs's writer raise on the given calls (1-based) that write ``table``; returns the calls seen."""
    import checkpoints.lake

    real = checkpoints.lake.write_deltalake
    seen: list[int] = []

    def write(target: Any, *args: Any, **kwargs: Any) -> Any:
        uri = target if isinstance(target, str) else target.table_uri
        if uri.rstrip("/").endswith(f"/{table}"):
            seen.append(len(seen) + 1)
            if seen[-1] in calls:
                raise OSError(f"No space left on device (os error 28) writing {table}")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(checkpoints.lake, "write_deltalake", write)
    return seen


def crash_replays_after_landing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every replay die (``KeyboardInterrupt``) after its commit, before it records its events."""
    record = DeadLetterQueue.record

    def crash_after_landing(self: DeadLetterQueue, events: Any) -> bool:
        if any(e.status == "replayed" for e in events):
            raise KeyboardInterrupt("killed mid-replay")
        return record(self, events)

    monkeypatch.setattr(DeadLetterQueue, "record", crash_after_landing)


# -- the acceptance test of issue 20's batch side ------------------------------------------
def test_a_write_failing_mid_batch_loses_no_row_and_replay_lands_each_exactly_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path / "lake")
    frame = _transactions(1, 1000)
    frame["amount"] = frame["amount"].map(repr).astype(object)
    frame.loc[[3, 450], "amount"] = "n/a"  # wrong type: text that is no number
    frame.loc[[10, 710], "merchant_risk"] = None  # a required field left empty
    path = _write(tmp_path / "in" / "batch.parquet", frame)
    writes = _fail_writes(monkeypatch, PREDICTIONS, calls={3})  # the third chunk's write, of five

    done = delivery.score_source(lake, store.model, Source("file", str(path)), PREDICTIONS, chunk_rows=CHUNK)

    sha = read(lake, Source("file", str(path))).version  # type: ignore[union-attr]
    assert len(writes) == 5
    landed, states = _predicted_rows(lake, sha), _rows_of(_dlq_states(lake), sha)
    assert len(landed) == len(set(landed))
    assert set(landed) | set(states) == set(range(1000)) and not set(landed) & set(states)
    invalid = {3, 10, 450, 710}
    failed_chunk = set(range(400, 600)) - invalid
    assert set(states) == invalid | failed_chunk
    assert {r: s[1] for r, s in states.items() if r in invalid} == {
        3: "amount: expected a number (double), got string 'n/a'",
        450: "amount: expected a number (double), got string 'n/a'",
        10: "merchant_risk: must not be null: expected a number (double)",
        710: "merchant_risk: must not be null: expected a number (double)",
    }
    assert all("No space left on device" in states[r][1] for r in failed_chunk)
    assert (done.landed, done.dead_lettered) == (1000 - len(states), {"invalid": 4, "write": 199})

    monkeypatch.undo()  # the disk has room again
    # The first replay dies after landing its predictions, before it records them.
    crash_replays_after_landing(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        delivery.replay(lake, store.model)
    monkeypatch.undo()
    assert sorted(_predicted_rows(lake, sha)) == sorted(set(range(1000)) - invalid)  # landed, not yet recorded

    for _ in range(2):  # the replay after the crash, then once more
        delivery.replay(lake, store.model)
        landed = _predicted_rows(lake, sha)
        assert landed == sorted(set(range(1000)) - invalid)  # each row once: none twice, none lost
        assert _waiting(lake) == {(sha, row) for row in invalid}  # refused rows keep waiting, with their reasons
    states = _rows_of(_dlq_states(lake), sha)
    assert {states[row][0] for row in invalid} == {"failed"}
    assert {row: states[row][1].split(":")[0] for row in invalid} == {
        3: "amount",
        450: "amount",
        10: "merchant_risk",
        710: "merchant_risk",
    }
    replayed = lake.read(PREDICTIONS).filter(pc.is_valid(pc.field("_dlq_batch")))
    assert replayed.num_rows == len(failed_chunk)
    assert set(replayed.column("_model_version").to_pylist()) == {store.model.version}


def test_a_chunk_the_model_fails_on_waits_whole_and_a_replay_lands_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path / "lake")
    path = _write(tmp_path / "in" / "batch.parquet", _transactions(8, 500))
    predict, calls = store.model.predict_frame, []

    def second_call_fails(frame: pd.DataFrame) -> Any:
        calls.append(len(frame))
        if len(calls) == 2:
            raise MemoryError("the model ran out of memory")
        return predict(frame)

    monkeypatch.setattr(store.model, "predict_frame", second_call_fails)
    done = delivery.score_source(lake, store.model, Source("file", str(path)), PREDICTIONS, chunk_rows=CHUNK)
    monkeypatch.undo()
    sha = read(lake, Source("file", str(path))).version  # type: ignore[union-attr]
    states = _rows_of(_dlq_states(lake), sha)
    assert (done.landed, done.dead_lettered) == (300, {"model": 200})
    assert set(_predicted_rows(lake, sha)) == set(range(500)) - set(states) and set(states) == set(range(200, 400))
    assert {reason for _, reason in states.values()} == {"the model failed: MemoryError: the model ran out of memory"}
    assert [r.landed for r in delivery.replay(lake, store.model)] == [200]
    assert _predicted_rows(lake, sha) == list(range(500)) and not _waiting(lake)


def test_the_same_input_version_is_scored_once_and_a_new_version_in_full(store: Store, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    rows = pa.Table.from_pandas(_transactions(2, 300).drop(columns=["event_time"]), preserve_index=False)
    lake.append("incoming", rows.slice(0, 120), key="a")
    lake.append("incoming", rows.slice(120), key="b")

    ids = ["transaction_id"]
    first = delivery.score_source(
        lake, store.model, resolve(lake, "incoming")[0], PREDICTIONS, chunk_rows=CHUNK, id_columns=ids
    )
    again = delivery.score_source(lake, store.model, resolve(lake, "incoming@1")[0], PREDICTIONS, chunk_rows=CHUNK)
    assert (first.landed, again.landed, again.done_before) == (300, 0, 300)
    assert _predicted_rows(lake, "1") == list(range(300))
    # A row is named by its position in the version's rows, read in the order their files were added.
    scored = lake.read(PREDICTIONS, columns=["transaction_id", "_row"]).sort_by("_row")
    version_1 = lake.read("incoming", 1, ordered=True)
    assert scored.column("transaction_id").to_pylist() == version_1.column("transaction_id").to_pylist()

    lake.append("incoming", rows.slice(0, 10), key="c")  # version 2: a new input version, scored whole
    newer = delivery.score_source(lake, store.model, resolve(lake, "incoming")[0], PREDICTIONS, chunk_rows=CHUNK)
    assert newer.landed == 310 and _predicted_rows(lake, "2") == list(range(310))

    # A file: its content is the input version, whatever its name.
    path = _write(tmp_path / "in" / "a.parquet", _transactions(3, 50))
    copy = shutil.copy(path, tmp_path / "in" / "copy-of-a.parquet")
    assert delivery.score_source(lake, store.model, Source("file", str(path)), PREDICTIONS).landed == 50
    assert delivery.score_source(lake, store.model, Source("file", str(copy)), PREDICTIONS).landed == 0
    assert lake.read(PREDICTIONS).num_rows == 300 + 310 + 50


def test_the_cli_scores_a_csv_and_lists_and_replays_its_dead_letters(
    cli: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _transactions(4, 40)
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[5, "amount"] = "abc"
    frame.loc[6, "hour"] = None  # an empty cell in an integer column
    _write(tmp_path / "landing" / "batch-00000.csv", frame, "csv")
    missing = _write(tmp_path / "landing" / "batch-00001.parquet", _transactions(5, 30).drop(columns=["merchant_risk"]))

    assert main(["score", "--input", str(tmp_path / "landing")]) == 0
    out = capsys.readouterr().out
    assert "40 row(s), 38 landed, 2 to the dead-letter queue (invalid 2)" in out
    assert "30 row(s), 0 landed, 30 to the dead-letter queue (invalid 30)" in out

    assert main(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert "1 x amount: expected a number (double), got string 'abc'" in listing
    assert "1 x hour: must not be null: expected an integer (long)" in listing
    assert "30 x merchant_risk: field required: expected a number (double)" in listing
    assert "32 row(s) wait in 2 batch(es)" in listing

    # The rows a champion refuses stay refused; nothing lands twice, whatever is replayed.
    batch = next(line.split()[0] for line in listing.splitlines() if str(missing) in line)
    assert main(["dlq", "replay", "--id", batch[:8]]) == 0
    assert "batch " + batch + ": 0 landed in predictions, 30 still refused" in capsys.readouterr().out
    lake = Lake(tmp_path / "lake")
    assert lake.read(PREDICTIONS).num_rows == 38
    assert len(_waiting(lake)) == 32
    assert main(["score", "--input", str(tmp_path / "landing")]) == 0
    assert "landed 0 prediction(s) in predictions; 0 row(s) to the dead-letter queue" in capsys.readouterr().out


def test_cli_errors_name_what_is_wrong_without_a_traceback(
    cli: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "batch.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "score", "--input", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"selfheal: error: --input '{missing}': no file or folder {missing}\n"
    assert main(["score", "-i", "nonexistent"]) == 1
    assert f"no table 'nonexistent' in the lake {tmp_path / 'lake'}, and no file or folder" in capsys.readouterr().err
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert main(["score", "--input", str(garbage)]) == 1
    assert "garbage.parquet: not a parquet file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["score", "--input", str(garbage), "--output", "dlq"])
    assert usage.value.code == 2 and "the dead-letter queue's table" in capsys.readouterr().err
    assert main(["dlq", "replay", "--id", "0123abcd"]) == 1
    assert "no waiting dead-letter batch with id '0123abcd'" in capsys.readouterr().err
    assert main(["dlq", "list"]) == 0 and "nothing waits" in capsys.readouterr().out


def test_the_flow_scores_the_landing_zone_once(store: Store, tmp_path: Path, prefect_harness: None) -> None:
    from flows.batch.flow import batch_inference_flow

    config = str(store.config(tmp_path))
    _write(tmp_path / "landing" / "batch-00000.parquet", _transactions(6, 120))
    _write(tmp_path / "landing" / "batch-00001.parquet", _transactions(7, 80))
    first = batch_inference_flow(config_path=config)
    second = batch_inference_flow(config_path=config)
    assert first.model_version == store.model.version
    assert [d.landed for d in first.deliveries] == [120, 80]
    assert [(d.landed, d.done_before) for d in second.deliveries] == [(0, 120), (0, 80)]
    scores = Lake(tmp_path / "lake").read(PREDICTIONS).column("_score").to_numpy()
    assert len(scores) == 200 and np.all((scores >= 0) & (scores <= 1))
    # A scheduled run before anything landed: nothing to score, and not a failure.
    (tmp_path / "other").mkdir()
    idle = batch_inference_flow(config_path=str(store.config(tmp_path / "other")))
    assert idle.deliveries == [] and "no file or folder" in str(idle.skipped)
