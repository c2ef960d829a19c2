"""Batch scoring throughput: `selfheal score`'s code path against a plain ``model.predict`` on the same parquet file.

One champion (the default trainer of selfheal.yaml: the pipeline's imputation and
ordinal encoding in front of a 100-iteration histogram gradient boosting model, trained
on 5,000 rows of the demo fraud stream) is registered in a fresh MLflow store and loaded
once, as ``selfheal score`` loads it. Each repeat generates a parquet file of ``--rows``
transactions (a new batch of the stream: a new input version) and scores it, in this
process, two ways:

* ``plain``: ``pandas.read_parquet`` of the file and the model's own ``predict`` on its
  feature columns: the least a batch scoring can do;
* ``score``: ``flows.batch.delivery.score_source`` on the file, what ``selfheal score
  --input FILE`` runs once it has loaded the champion: the file read and digested (its
  sha256 is the input version), every row checked against the model's input contract,
  one ``predict_proba`` per chunk of ``CHUNK_ROWS`` rows, the prediction rows with their
  lineage appended to the lake's ``predictions`` table (one exactly-once commit per
  chunk, with the ``transaction_id`` column), the dead-letter bookkeeping. The table
  exists (an untimed warm-up run created it), as it does for a scheduled scoring.

Left out of the timing on both sides: generating and writing the files, training and
registering the model, loading it (``LoadedModel.load``). An untimed run of each side
goes first. Repeats alternate which side runs first; the figures are medians. CPU
seconds are printed beside wall time: on a machine other work shares, they vary less
(they count the model's OpenMP threads too, which may spin on after a call returns).
The issue's target (issue 20): score's rows/s >= 0.8 x plain's (the bookkeeping costs at
most 20%).

Run: ``.venv/bin/python benchmarks/batch_scoring.py [--rows 1000000] [--repeats 3]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package: put the repository root there instead.
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")

import pandas as pd  # noqa: E402

from flows.batch.chain import BATCH_THREADS  # noqa: E402
from flows.batch.delivery import CHUNK_ROWS, score_source  # noqa: E402
from flows.batch.inputs import Source  # noqa: E402
from flows.demo.data import encode, generate_batch  # noqa: E402
from serving.model import LoadedModel  # noqa: E402

TRAIN_ROWS = 5_000


def _load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def champion(root: Path) -> LoadedModel:
    """Train, register, promote and load the benchmark's champion (untimed)."""
    import mlflow

    from flows.config import DataConfig, TrainerConfig
    from flows.pipeline.stages.train import build_model, make_estimator
    from flows.pipeline.stages.validate import infer_schema
    from flows.registry import CHAMPION, Registry
    from serving.modelio import log_sklearn_model, mlflow_uris

    uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"
    frame = generate_batch(0, rows=TRAIN_ROWS, seed=7)
    schema = infer_schema(frame, DataConfig(target="is_fraud", time_column="event_time", id_columns=["transaction_id"]))
    estimator = make_estimator(TrainerConfig(params={"max_iter": 100, "learning_rate": 0.1}), "binary")
    model = build_model(schema, "is_fraud", ["transaction_id"], estimator).fit(frame[list(schema)], frame["is_fraud"])
    with mlflow_uris(uri):
        experiment = mlflow.create_experiment("bench", artifact_location=str(artifacts))
        with mlflow.start_run(experiment_id=experiment):
            info = log_sklearn_model(model, frame[list(schema)].head(5), registered_model_name="bench-batch")
    registry = Registry(uri, "bench-batch", artifact_root=str(artifacts))
    registry.promote(str(info.registered_model_version))
    ref = registry.by_alias(CHAMPION)
    assert ref is not None
    return LoadedModel.load(registry, ref, BATCH_THREADS)  # as `selfheal score` loads it


def plain(model: LoadedModel, path: Path) -> int:
    """``model.predict`` over the parquet file's feature columns; the rows predicted."""
    frame = pd.read_parquet(path)
    return len(model.model.predict(frame[list(model.schema.names)]))


def score(model: LoadedModel, path: Path, lake_root: Path) -> int:
    """`selfheal score`'s delivery of the file into the lake; the rows whose prediction landed."""
    from checkpoints import Lake

    done = score_source(Lake(lake_root), model, Source("file", str(path)), "predictions", id_columns=["transaction_id"])
    if done.landed != done.rows or done.dead_lettered:
        raise SystemExit(f"the benchmark's rows must all land: {done.line()}")
    return done.landed


def timed(run: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process's threads, rows) of one run."""
    started, cpu = time.perf_counter(), time.process_time()
    rows = run()
    return time.perf_counter() - started, time.process_time() - cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the parquet file (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side, one file each (default 5)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="selfheal-bench-batch-"))
    try:
        started = time.perf_counter()
        model = champion(work)
        paths = [work / f"batch-{n}.parquet" for n in range(args.repeats)]
        for n, path in enumerate(paths):
            path.write_bytes(encode(generate_batch(1 + n, rows=args.rows, seed=11), "parquet"))
        warm = work / "warm.parquet"
        warm.write_bytes(encode(generate_batch(0, rows=2_000, seed=11), "parquet"))
        print(
            f"champion v{model.version} loaded; {args.repeats} files of {args.rows:,} rows, "
            f"{paths[0].stat().st_size / 1e6:.1f} MB of parquet each ({time.perf_counter() - started:.1f} s untimed "
            f"set-up); chunks of {CHUNK_ROWS:,} rows"
        )
        plain(model, warm), score(model, warm, work / "lake")
        load_before = _load_average()
        runs: dict[str, list[float]] = {"plain": [], "score": []}
        cpu: dict[str, list[float]] = {"plain": [], "score": []}
        for repeat, path in enumerate(paths):
            sides: dict[str, Callable[[], int]] = {
                "plain": functools.partial(plain, model, path),
                "score": functools.partial(score, model, path, work / "lake"),
            }
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for side in order:
                seconds, cpu_seconds, rows = timed(sides[side])
                assert rows == args.rows, (side, rows)
                runs[side].append(seconds)
                cpu[side].append(cpu_seconds)
            print(
                f"repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{s} {runs[s][-1]:.2f} s ({cpu[s][-1]:.2f} CPU s)" for s in runs)
            )
        load_after = _load_average()
        rate = {side: args.rows / statistics.median(seconds) for side, seconds in runs.items()}
        print(f"\nmedians of {args.repeats} runs per side (wall; CPU seconds of this process's threads):")
        for side in runs:
            wall, used = statistics.median(runs[side]), statistics.median(cpu[side])
            print(f"  {side:<6} {wall:7.2f} s  {rate[side]:>12,.0f} rows/s   {used:7.2f} CPU s")
        ratio = rate["score"] / rate["plain"]
        by_cpu = statistics.median(cpu["plain"]) / statistics.median(cpu["score"])
        print(f"score / plain = {ratio:.2f} in rows/s (target >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'})")
        print(
            f"  the same ratio in CPU seconds: {by_cpu:.2f} (steadier than wall time when other work shares the CPUs)"
        )
        print("not timed on either side: data generation, training, registration, loading the model")
        print("the machine's other work shares its CPUs: compare the two sides of one run, not runs of different days")
        print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after, on {os.cpu_count()} CPUs")
        model.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
