"""Generalization: selfheal on streams it was not built for, with only a generated selfheal.yaml.

Each stream is binary, in batches of ``--rows`` rows, with a known change point
(river's synthetic generators, which we did not design: SEA, STAGGER, Agrawal,
Hyperplane, RandomRBF, FriedmanDrift (global) binarized at its pre-change median; plus a
seasonal stream with no change at all). For each stream, in a fresh folder:

1. write ``selfheal.yaml`` naming only the target and the task (every other setting
   is selfheal's default), land the first ``--initial`` batches (the reference period:
   by default six, one year of the seasonal stream, since no monitor can learn a
   season it has not seen), run the pipeline (the first champion);
2. for every later batch: land it, run the pipeline (it scores and judges the batch
   with the champion before training on it: ``flows.monitor.batch``), then run the
   healer for ``--ticks`` ticks (it reads the batch's signals from the inbox, opens
   incidents, repairs, verifies);
3. read the quality the production model had on each batch it met (ROC AUC of the
   champion's scores on the batch's labels, from ``batch_log``) and the incidents.

Printed per stream: the first alarm's delay in batches after the change (an alarm
is a prediction-drift, concept-drift or performance signal from a batch, or a data
drift that reaches the model: CRITICAL), alarms before the change (false alarms), data
drift only observed before it (WARNING: the model's outputs and estimated quality did
not move, so nothing is repaired), ROC AUC before the change (mean over the
batches before it), right after it (the change batch), after healing (mean of the
last two batches), the ceiling (a model with the trainer's defaults trained on the
post-change batches but the last two, scored on the last two), the recovery ratio
(after healing / before), and each incident's cause and outcome. Beside it,
Evidently's and NannyML's default drift detection on the same batches against the
same first ``--initial`` batches (their own venvs under ``.bench-venvs/``; ``--no-peers`` skips
them): the first batch each flags and how many it flags before the change. Evidently:
DataDriftPreset, a batch flagged when its dataset-drift share reaches the preset's 0.5.
NannyML: UnivariateDriftCalculator with its default methods and thresholds on chunks of
a fifth of a batch (its thresholds come from the reference's chunks, so the reference
needs several); a batch flagged when most of its chunks alert. Both see features only.

Run: ``.venv/bin/python benchmarks/generalization.py [--streams sea,agrawal] [--batches 12]``.
It takes minutes per stream (a pipeline run and healer ticks per batch); say the
machine's load when quoting it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
# Run as a file, this folder would come first on sys.path and benchmarks/serving.py
# would shadow the serving package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
PEERS = ROOT / ".bench-venvs"
PEER_REQUIREMENTS = {
    "evidently": ["evidently>=0.7", "pandas<3"],
    "nannyml": ["nannyml>=0.13", "statsmodels", "pandas<3"],
}
ALARMS = {"data_drift", "prediction_drift", "concept_drift", "performance_drop"}
TARGET = "y"


@dataclass
class Stream:
    """A named generator of (features, label) rows and the batch its change starts in (None: no change)."""

    name: str
    rows: Callable[[int], Iterator[tuple[dict[Any, Any], Any]]]
    change: int | None


def _river(before: Any, after: Any, at_row: int) -> Iterator[tuple[dict[Any, Any], Any]]:
    return itertools.chain(itertools.islice(before, at_row), after)


def streams(change: int, rows: int) -> list[Stream]:
    """The streams; ``change`` is the first batch of the new concept."""
    from river.datasets import synth

    at = change * rows

    def friedman(seed: int) -> Iterator[tuple[dict[Any, Any], Any]]:
        # Global recurring abrupt drift: at the change the function's relevant features
        # swap over the whole space (its return to the old concept is placed past the end).
        # The local variant ("lea") changes too small a region to move the model's quality
        # at all (ROC AUC 0.977-0.982 on both sides, measured): nothing there to detect.
        raw = iter(synth.FriedmanDrift(drift_type="gra", position=(at, at + 1000 * rows), seed=seed))
        first = list(itertools.islice(raw, at))
        cut = float(np.median([y for _, y in first]))
        return ((x, int(y > cut)) for x, y in itertools.chain(first, raw))

    def seasonal(seed: int) -> Iterator[tuple[dict[Any, Any], Any]]:
        rng = np.random.default_rng(seed)
        for i in itertools.count():
            season = np.sin(2 * np.pi * (i / rows) / 6)  # six batches a year
            x = {
                "temp": rng.normal(10 * season, 3),
                "humidity": rng.normal(60 - 10 * season, 8),
                "wind": rng.gamma(2, 2),
            }
            risk = 0.15 * x["temp"] - 0.05 * (x["humidity"] - 60) + 0.2 * x["wind"] + rng.normal(0, 1)
            yield x, int(risk > 1.0)

    return [
        Stream("sea", lambda s: _river(synth.SEA(0, seed=s), synth.SEA(2, seed=s + 1), at), change),
        Stream("stagger", lambda s: _river(synth.STAGGER(0, seed=s), synth.STAGGER(2, seed=s + 1), at), change),
        Stream("agrawal", lambda s: _river(synth.Agrawal(0, seed=s), synth.Agrawal(2, seed=s + 1), at), change),
        Stream(
            "hyperplane",
            lambda s: _river(synth.Hyperplane(seed=s, n_features=6), synth.Hyperplane(seed=s + 7, n_features=6), at),
            change,
        ),
        Stream(
            "rbf",
            lambda s: _river(
                synth.RandomRBF(seed_model=s, seed_sample=s, n_features=6),
                synth.RandomRBF(seed_model=s + 7, seed_sample=s + 1, n_features=6),
                at,
            ),
            change,
        ),
        Stream("friedman", friedman, change),
        Stream("seasonal", seasonal, None),
    ]


def batches(stream: Stream, count: int, rows: int, seed: int) -> list[pd.DataFrame]:
    """``count`` batches of ``rows`` rows; feature names made strings, the label an int column ``y``."""
    it = stream.rows(seed)
    out = []
    for _ in range(count):
        records = [
            {**{f"x{k}" if isinstance(k, int) else str(k): v for k, v in x.items()}, TARGET: int(y)}
            for x, y in itertools.islice(it, rows)
        ]
        out.append(pd.DataFrame.from_records(records))
    return out


# -- one stream through selfheal ------------------------------------------------------
@dataclass
class Outcome:
    """What selfheal did on one stream."""

    alarms: dict[int, list[str]] = field(default_factory=dict)
    observed: dict[int, list[str]] = field(default_factory=dict)
    quality: dict[int, float] = field(default_factory=dict)
    incidents: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_selfheal(frames: list[pd.DataFrame], folder: Path, ticks: int, initial: int) -> Outcome:
    """Land the batches one by one through the pipeline and the healer (in this process)."""
    from checkpoints import Lake
    from flows.config import load_config
    from flows.healer.machine import HealerLoop
    from flows.monitor.batch import BATCH_LOG
    from flows.pipeline.flow import pipeline_flow

    folder.mkdir(parents=True)
    config = folder / "selfheal.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "project": folder.name,
                "home": str(folder / "home"),
                "lake": {"root": str(folder / "lake")},
                "landing": {"path": str(folder / "landing")},
                "data": {"target": TARGET, "task": "binary"},
            }
        )
    )
    landing = folder / "landing"
    landing.mkdir()
    out, started = Outcome(), time.perf_counter()
    for k in range(initial):
        frames[k].to_parquet(landing / f"batch-{k:05d}.parquet", index=False)
    pipeline_flow(str(config))
    healer = HealerLoop(load_config(config), str(config))
    for k in range(initial, len(frames)):
        frames[k].to_parquet(landing / f"batch-{k:05d}.parquet", index=False)
        result = pipeline_flow(str(config))
        lines = result.monitored.signals if result.monitored is not None else ()
        judged = [(line.split(" ", 2)[0], line.split(" ", 2)[1].rstrip(":")) for line in lines]
        # Data drift the monitor found does not reach the model is WARNING and only observed
        # (healing.unfelt_drift): it is counted apart, not as an alarm.
        out.alarms[k] = sorted(
            {kind for sev, kind in judged if kind in ALARMS and (kind != "data_drift" or sev == "CRITICAL")}
        )
        out.observed[k] = sorted({kind for sev, kind in judged if kind == "data_drift" and sev != "CRITICAL"})
        for _ in range(ticks):
            healer.tick()
    logged = Lake(folder / "lake").read(BATCH_LOG).to_pandas()
    for batch_id, rows in logged.groupby("_batch_id"):
        if rows["_label"].nunique() == 2:
            out.quality[int(batch_id)] = float(roc_auc_score(rows["_label"], rows["_score"]))
    out.incidents = _incidents(Lake(folder / "lake"))
    out.seconds = time.perf_counter() - started
    return out


def _incidents(lake: Any) -> list[str]:
    """``cause:STATE`` per incident (with the MTTR when resolved, the last note when escalated)."""
    from checkpoints.incidents import IncidentLog

    lines = []
    for incident in IncidentLog(lake).incidents():
        state = incident.state.value if hasattr(incident.state, "value") else str(incident.state)
        extra = f" mttr={incident.mttr_seconds:.0f}s" if incident.mttr_seconds is not None else ""
        if state.lower() == "escalated":
            extra = f" ({incident.last.detail[:100]})"
        lines.append(f"{incident.cause}:{state}{extra}")
    return lines


def ceiling(frames: list[pd.DataFrame], change: int) -> float | None:
    """ROC AUC on the last two batches of a default model trained on the post-change batches before them."""
    if len(frames[change:-2]) == 0:
        return None
    train = pd.concat(frames[change:-2], ignore_index=True)
    test = pd.concat(frames[-2:], ignore_index=True)
    if train.empty or train[TARGET].nunique() < 2 or test[TARGET].nunique() < 2:
        return None
    model = HistGradientBoostingClassifier(random_state=0).fit(train.drop(columns=TARGET), train[TARGET])
    return float(roc_auc_score(test[TARGET], model.predict_proba(test.drop(columns=TARGET))[:, 1]))


# -- the peers ------------------------------------------------------------------------
PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import pandas as pd
    warnings.filterwarnings("ignore")
    peer, data, initial = sys.argv[1], pd.read_parquet(sys.argv[2]), int(sys.argv[3])
    ref = data[data.batch < initial].drop(columns=["batch"])
    flagged = []
    if peer == "evidently":
        from evidently import Report
        from evidently.presets import DataDriftPreset
        for b in sorted(data.batch.unique()):
            if b < initial:
                continue
            cur = data[data.batch == b].drop(columns=["batch"])
            snap = Report([DataDriftPreset()]).run(reference_data=ref, current_data=cur).dict()
            # The preset's first metric is the drifted-columns count: {"count": n, "share": s}.
            counts = [m["value"] for m in snap["metrics"] if isinstance(m.get("value"), dict) and "share" in m["value"]]
            if counts and counts[0]["share"] >= 0.5:
                flagged.append(int(b))
    else:
        import nannyml as nml
        # Thresholds come from the reference's own chunks, so it needs several: five per batch.
        size = int((data.batch == initial).sum()) // 5
        calc = nml.UnivariateDriftCalculator(column_names=list(ref.columns), chunk_size=size)
        calc.fit(ref)
        for b in sorted(data.batch.unique()):
            if b < initial:
                continue
            cur = data[data.batch == b].drop(columns=["batch"])
            res = calc.calculate(cur).filter(period="analysis").to_df()
            alerts = res.xs("alert", axis=1, level=2).any(axis=1)
            if alerts.mean() >= 0.5:  # most of the batch's chunks alert
                flagged.append(int(b))
    print(json.dumps(flagged))
    """
)


def ensure_peer(name: str) -> Path:
    """``.bench-venvs/<name>`` with the peer and pandas<3 (created once)."""
    python = PEERS / name / "bin" / "python"
    if not python.exists():
        print(f"creating {PEERS / name} (one time) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS / name)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS[name]], check=True)
    return python


def run_peer(name: str, frames: list[pd.DataFrame], tmp: Path, initial: int) -> list[int] | str:
    """Batches the peer's default drift detection flags (features only), or why it could not run."""
    data = pd.concat([f.drop(columns=TARGET).assign(batch=i) for i, f in enumerate(frames)], ignore_index=True)
    path = tmp / f"{name}.parquet"
    data.to_parquet(path)
    try:
        done = subprocess.run(
            [str(ensure_peer(name)), "-c", PEER_SCRIPT, name, str(path), str(initial)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "DO_NOT_TRACK": "1"},
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"did not run: {getattr(exc, 'stderr', exc)!s:.200}"
    flagged: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    return flagged


# -- report ---------------------------------------------------------------------------
def first_after(flagged: list[int], change: int | None) -> str:
    if change is None:
        return "-"
    hit = next((b for b in sorted(flagged) if b >= change), None)
    return "never" if hit is None else str(hit - change)


def before(flagged: list[int], change: int | None, last: int) -> int:
    return sum(1 for b in flagged if b < (change if change is not None else last + 1))


def row(stream: Stream, frames: list[pd.DataFrame], out: Outcome, peers: dict[str, list[int] | str]) -> dict[str, Any]:
    change, last = stream.change, len(frames) - 1
    alarmed = [b for b, kinds in out.alarms.items() if kinds]
    pre = [q for b, q in out.quality.items() if b < (change if change is not None else last + 1)]
    before_q = float(np.mean(pre)) if pre else float("nan")
    after_change = out.quality.get(change, float("nan")) if change is not None else float("nan")
    healed_q = float(np.mean([out.quality[b] for b in (last - 1, last) if b in out.quality] or [np.nan]))
    top = ceiling(frames, change) if change is not None else None
    result: dict[str, Any] = {
        "stream": stream.name,
        "change": change,
        "first_alarm_delay": first_after(alarmed, change),
        "false_alarms": before(alarmed, change, last),
        "observed_drift_before": before([b for b, kinds in out.observed.items() if kinds], change, last),
        "auc_before": round(before_q, 4),
        "auc_at_change": round(after_change, 4),
        "auc_after_healing": round(healed_q, 4),
        "ceiling": None if top is None else round(top, 4),
        "recovery": round(healed_q / before_q, 3) if before_q == before_q and before_q > 0 else None,
        "ceiling_ratio": None if top is None or not before_q else round(top / before_q, 3),
        "incidents": out.incidents,
        "seconds": round(out.seconds, 1),
    }
    for name, flagged in peers.items():
        if isinstance(flagged, str):
            result[name] = flagged
        else:
            result[name] = {
                "first_alarm_delay": first_after(flagged, change),
                "false_alarms": before(flagged, change, last),
            }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="", help="comma-separated names (default: all)")
    parser.add_argument("--batches", type=int, default=15, help="batches per stream (default 15)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch (default 1000)")
    parser.add_argument(
        "--initial", type=int, default=6, help="batches before the first champion: the reference period (default 6)"
    )
    parser.add_argument("--change", type=int, default=9, help="first batch of the new concept (default 9)")
    parser.add_argument("--ticks", type=int, default=3, help="healer ticks after each batch (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-peers", action="store_true", help="skip Evidently and NannyML")
    args = parser.parse_args(argv)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API server records the flow runs; on a busy machine it needs more than 20 s to start.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="gen-prefect-"))
    from flows.prefect_runs import in_process_runs

    wanted = {s for s in args.streams.split(",") if s}
    chosen = [s for s in streams(args.change, args.rows) if not wanted or s.name in wanted]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for stream in chosen:
        frames = batches(stream, args.batches, args.rows, args.seed)
        with tempfile.TemporaryDirectory(prefix=f"gen-{stream.name}-") as tmp, in_process_runs():
            out = run_selfheal(frames, Path(tmp) / stream.name, args.ticks, args.initial)
            names = () if args.no_peers else ("evidently", "nannyml")
            peers = {p: run_peer(p, frames, Path(tmp), args.initial) for p in names}
        rows.append(row(stream, frames, out, peers))
        print(json.dumps(rows[-1]), flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print("\n" + pd.DataFrame(rows).drop(columns=["incidents"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
