"""Detection delay and false alarms: our monitor detectors against Evidently and river's ADWIN.

Streams of 500-row windows with a known drift onset, on a card-fraud-like
setup (4 numeric features, 1 categorical, a logistic model trained on the
reference, labels available per row):

- ``none``        no drift (false alarms only)
- ``mean_0.5``    x0 mean shifts by 0.5 sigma at the onset
- ``mean_1.0``    x0 mean shifts by 1 sigma
- ``categorical`` merchant shares move from .4/.3/.2/.1 to .25/.3/.25/.2
- ``concept``     the label rule changes; features (and predictions) unchanged

Per window each method says alarm or not:

- ours: ``compare`` on features + model score (Holm, effect floors), the
  error-stream CUSUM, and the labeled-performance check, with the monitor's
  default thresholds; an alarm is any of the three.
- Evidently: DataDriftPreset (its defaults: Wasserstein/Jensen-Shannon at 0.1 for
  a reference above 1000 rows) on features + score. Reported two ways: its
  dataset-drift flag (share of drifted columns >= 0.5, the preset's default) and
  "any column drifted".
- ADWIN: river's ``drift.ADWIN()`` (delta 0.002) on every numeric feature, on each
  category's indicator, on the score and on the per-row error; an alarm when any
  of them detects a change inside the window.

Delay = windows from the onset window to the first alarm at or after it (0: in
the onset window). False alarms = alarmed windows among windows without drift
(all of ``none`` plus the windows before each onset). Targets (issue 5): false
alarms <= 1% of windows; our median delay no worse than the better peer on
each stream. Evidently runs in ``.bench-venvs/evidently`` (gitignored; created by
``benchmarks/drift_speed.py``'s helper), in one subprocess over all windows.
Run: ``.venv/bin/python benchmarks/detection.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_speed import ensure_peer_venv  # noqa: E402

from flows.monitor.detectors import (  # noqa: E402
    ErrorCusum,
    MonitorThresholds,
    ReferenceProfile,
    check_performance,
    compare,
)

NUMERIC = ["x0", "x1", "x2", "x3"]
CATS = np.array(["grocery", "travel", "online", "fuel"], dtype=object)
SHARES = [0.4, 0.3, 0.2, 0.1]
SHIFTED_SHARES = [0.25, 0.3, 0.25, 0.2]
STREAMS = ["none", "mean_0.5", "mean_1.0", "categorical", "concept"]
WINDOW = 500
REFERENCE_ROWS = 5000

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset
    ref = pd.read_parquet(sys.argv[1]); windows = pd.read_parquet(sys.argv[2])
    out = []
    for key, cur in windows.groupby(["stream", "seed", "window"], sort=False):
        cur = cur.drop(columns=["stream", "seed", "window"])
        snap = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref).dict()["metrics"]
        share, drifted = 0.0, 0
        for m in snap:
            cfg = m["config"]
            if cfg.get("type", "").endswith("DriftedColumnsCount"):
                share = m["value"]["share"]
            elif cfg.get("type", "").endswith("ValueDrift"):
                p_value = "p_value" in m["metric_name"]
                drifted += int(m["value"] < cfg["threshold"] if p_value else m["value"] >= cfg["threshold"])
        out.append([key[0], int(key[1]), int(key[2]), bool(share >= 0.5), bool(drifted > 0)])
    print(json.dumps(out))
    """
)


def label_rule(x: pd.DataFrame, rng: np.random.Generator, concept: bool) -> np.ndarray:
    second = -x["x1"] if concept else x["x1"]
    z = x["x0"] + second + 0.5 * (x["merchant"] == "online") + rng.normal(0, 0.5, len(x))
    return (z > 1.2).astype(np.float64).to_numpy()


def features(rng: np.random.Generator, n: int, shift: float = 0.0, shares: list[float] | None = None) -> pd.DataFrame:
    data = {name: rng.normal(size=n) for name in NUMERIC}
    data["x0"] = data["x0"] + shift
    frame = pd.DataFrame(data)
    frame["merchant"] = rng.choice(CATS, size=n, p=shares or SHARES)
    return frame


def design(frame: pd.DataFrame) -> np.ndarray:
    onehot = np.stack([(frame["merchant"] == c).to_numpy(dtype=float) for c in CATS[1:]], axis=1)
    return np.hstack([frame[NUMERIC].to_numpy(), onehot])


@dataclass
class Stream:
    name: str
    seed: int
    onset: int | None
    frame: pd.DataFrame  # features + score + prediction + label + window


def make_stream(name: str, seed: int, windows: int, onset: int, model: LogisticRegression) -> Stream:
    rng = np.random.default_rng(1000 + seed)
    parts = []
    for w in range(windows):
        drifting = name != "none" and w >= onset
        shift = {"mean_0.5": 0.5, "mean_1.0": 1.0}.get(name, 0.0) if drifting else 0.0
        shares = SHIFTED_SHARES if drifting and name == "categorical" else None
        frame = features(rng, WINDOW, shift, shares)
        frame["label"] = label_rule(frame, rng, concept=drifting and name == "concept")
        frame["window"] = w
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    frame["score"] = model.predict_proba(design(frame))[:, 1]
    frame["prediction"] = (frame["score"] >= 0.5).astype(np.float64)
    return Stream(name, seed, None if name == "none" else onset, frame)


# -- methods ---------------------------------------------------------------------------
Alarms = list[int | None]  # per window: the row (within the window) by which the alarm is known, or None


def run_ours(stream: Stream, profile: ReferenceProfile, baseline: dict[str, float], t: MonitorThresholds) -> Alarms:
    cusum = ErrorCusum(
        warmup=t.concept.warmup,
        error_ratio=t.concept.error_ratio,
        threshold=t.concept.threshold,
        baseline_margin=t.concept.baseline_margin,
    )
    alarms: Alarms = []
    for _, win in stream.frame.groupby("window", sort=True):
        drift = compare(profile, win[[*NUMERIC, "merchant", "score"]], t.drift).drifted
        errors = (win["prediction"] != win["label"]).to_numpy(dtype=float)
        concept_row = cusum.update_many(errors)
        perf = check_performance(win["label"], win["prediction"], win["score"], "binary", baseline, t.performance)
        if concept_row is not None:
            alarms.append(concept_row)  # the CUSUM is per row: it knows before the window closes
        elif drift or (perf is not None and perf.dropped):
            alarms.append(len(win) - 1)  # window-level tests answer when the window closes
        else:
            alarms.append(None)
    return alarms


def run_adwin(stream: Stream) -> Alarms:
    from river import drift

    frame = stream.frame
    series = {name: frame[name].to_numpy() for name in [*NUMERIC, "score"]}
    for c in CATS:
        series[f"is_{c}"] = (frame["merchant"] == c).to_numpy(dtype=float)
    series["error"] = (frame["prediction"] != frame["label"]).to_numpy(dtype=float)
    detected_rows = np.zeros(len(frame), dtype=bool)
    for values in series.values():
        detector = drift.ADWIN()
        for i, v in enumerate(values):
            detector.update(float(v))
            if detector.drift_detected:
                detected_rows[i] = True
    windows = frame["window"].to_numpy()
    out: Alarms = []
    for w in range(int(windows.max()) + 1):
        hits = np.flatnonzero(detected_rows[windows == w])
        out.append(int(hits[0]) if hits.size else None)
    return out


def run_evidently(python: Path, reference: pd.DataFrame, streams: list[Stream], tmp: Path) -> dict:
    ref_path, win_path = tmp / "reference.parquet", tmp / "windows.parquet"
    reference[[*NUMERIC, "merchant", "score"]].to_parquet(ref_path)
    frames = []
    for s in streams:
        f = s.frame[[*NUMERIC, "merchant", "score", "window"]].copy()
        f.insert(0, "seed", s.seed)
        f.insert(0, "stream", s.name)
        frames.append(f)
    pd.concat(frames, ignore_index=True).to_parquet(win_path)
    out = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, str(ref_path), str(win_path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "DO_NOT_TRACK": "1"},
    )
    result: dict[tuple[str, int], tuple[Alarms, Alarms]] = {}
    for name, seed, window, dataset, anycol in json.loads(out.stdout.strip().splitlines()[-1]):
        ds, ac = result.setdefault((name, seed), ([], []))
        assert window == len(ds)
        ds.append(WINDOW - 1 if dataset else None)
        ac.append(WINDOW - 1 if anycol else None)
    return result


# -- scoring ------------------------------------------------------------------------------
def score(streams: list[Stream], alarms: dict[tuple[str, int], Alarms]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    quiet_windows = quiet_alarms = 0
    for s in streams:
        a = alarms[(s.name, s.seed)]
        end = len(a) if s.onset is None else s.onset
        quiet_windows += end
        quiet_alarms += sum(x is not None for x in a[:end])
    for name in STREAMS:
        if name == "none":
            continue
        delays, row_delays = [], []
        for s in streams:
            if s.name != name:
                continue
            a = alarms[(s.name, s.seed)]
            assert s.onset is not None
            hit = next((w for w in range(s.onset, len(a)) if a[w] is not None), None)
            delays.append(float("inf") if hit is None else float(hit - s.onset))
            row = a[hit] if hit is not None else None
            row_delays.append(float("inf") if hit is None or row is None else float((hit - s.onset) * WINDOW + row + 1))
        found = [d for d in delays if d != float("inf")]
        out[name] = {
            "detected": len(found),
            "runs": len(delays),
            "median_delay": statistics.median(delays),
            "median_rows": statistics.median(row_delays),
        }
    out["_false_alarms"] = {"alarms": quiet_alarms, "windows": quiet_windows, "rate": quiet_alarms / quiet_windows}
    return out


def _reference_and_model(rng: np.random.Generator) -> tuple[pd.DataFrame, LogisticRegression, dict[str, float]]:
    """The reference window (scored), the model trained on it, and its metrics on a holdout."""
    reference = features(rng, REFERENCE_ROWS)
    reference["label"] = label_rule(reference, rng, concept=False)
    model = LogisticRegression(max_iter=1000).fit(design(reference), reference["label"])
    holdout = features(rng, REFERENCE_ROWS)
    holdout["label"] = label_rule(holdout, rng, concept=False)
    h_score = model.predict_proba(design(holdout))[:, 1]
    base = check_performance(holdout["label"], (h_score >= 0.5).astype(float), h_score, "binary", {}, None)
    assert base is not None
    reference["score"] = model.predict_proba(design(reference))[:, 1]
    return reference, model, dict(base.metrics)


def _run_methods(
    streams: list[Stream], reference: pd.DataFrame, baseline: dict[str, float], skip_peer: bool
) -> tuple[dict[str, dict[tuple[str, int], Alarms]], dict[str, float]]:
    """Each method's alarms per stream, and the seconds each method took."""
    t = MonitorThresholds()
    profile = ReferenceProfile.from_data(reference[[*NUMERIC, "merchant", "score"]], t.drift)
    methods: dict[str, dict[tuple[str, int], Alarms]] = {}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], dict[tuple[str, int], Alarms]]) -> None:
        start = time.perf_counter()
        methods[name] = fn()
        timings[name] = time.perf_counter() - start

    timed("ours", lambda: {(s.name, s.seed): run_ours(s, profile, baseline, t) for s in streams})
    timed("adwin", lambda: {(s.name, s.seed): run_adwin(s) for s in streams})
    if not skip_peer:
        python = ensure_peer_venv()
        with tempfile.TemporaryDirectory(prefix="detection-") as tmp:
            start = time.perf_counter()
            ev = run_evidently(python, reference, streams, Path(tmp))
            timings["evidently"] = time.perf_counter() - start
        methods["evidently_dataset"] = {k: v[0] for k, v in ev.items()}
        methods["evidently_anycol"] = {k: v[1] for k, v in ev.items()}
    return methods, timings


def _print_report(scores: dict[str, dict[str, dict[str, float]]], timings: dict[str, float]) -> None:
    """The delay table, the false-alarm rates, the timings and the verdict against each target."""
    print()
    header = f"{'stream':<12} " + " ".join(f"{m:>20}" for m in scores)
    print("median delay: windows (rows from onset until the alarm is known) [detected/runs]; inf = missed")
    print(header)
    verdicts = []
    for name in STREAMS[1:]:
        cells = []
        for m in scores:
            r = scores[m][name]
            cells.append(f"{r['median_delay']:g} ({r['median_rows']:g}) [{int(r['detected'])}/{int(r['runs'])}]")
        print(f"{name:<12} " + " ".join(f"{c:>20}" for c in cells))
        peers = [(scores[m][name]["median_delay"], scores[m][name]["median_rows"]) for m in scores if m != "ours"]
        ours = (scores["ours"][name]["median_delay"], scores["ours"][name]["median_rows"])
        verdicts.append((name, ours, min(peers) if peers else (float("inf"), float("inf"))))
    print()
    print("false alarms on windows without drift (alarmed / windows)")
    for m in scores:
        fa = scores[m]["_false_alarms"]
        print(f"  {m:<20} {int(fa['alarms']):>4} / {int(fa['windows'])}  = {100 * fa['rate']:.2f}%")
    print()
    print("seconds per method: " + ", ".join(f"{m} {s:.1f}" for m, s in timings.items()))
    print()
    fa_ok = scores["ours"]["_false_alarms"]["rate"] <= 0.01
    fa_text = f"{100 * scores['ours']['_false_alarms']['rate']:.2f}%"
    print(f"target false alarms <= 1%: ours {fa_text} -> {'met' if fa_ok else 'NOT met'}")
    for name, ours, best in verdicts:
        ok = ours[0] <= best[0]
        print(
            f"target delay on {name:<12}: ours {ours[0]:g} windows ({ours[1]:g} rows) vs best peer "
            f"{best[0]:g} windows ({best[1]:g} rows) -> {'met' if ok else 'NOT met'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="streams per kind (default 8)")
    parser.add_argument("--windows", type=int, default=30, help="windows per stream (default 30)")
    parser.add_argument("--onset", type=int, default=15, help="window of the drift onset (default 15)")
    parser.add_argument("--skip-peer", action="store_true", help="skip Evidently")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    reference, model, baseline = _reference_and_model(rng)
    shown = json.dumps({k: round(v, 3) for k, v in baseline.items()})
    print(f"reference {REFERENCE_ROWS} rows; holdout metrics {shown}")
    print(f"{args.seeds} streams per kind x {args.windows} windows of {WINDOW} rows; onset at window {args.onset}")
    streams = [make_stream(n, s, args.windows, args.onset, model) for n in STREAMS for s in range(args.seeds)]
    methods, timings = _run_methods(streams, reference, baseline, args.skip_peer)
    _print_report({m: score(streams, a) for m, a in methods.items()}, timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
