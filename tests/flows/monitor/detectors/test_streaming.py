"""Concept drift by CUSUM over the error stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.monitor.detectors import ErrorCusum


def _loop_cusum(det: ErrorCusum, errors: np.ndarray) -> list[int]:
    """Reference implementation: the textbook recursion, one sample at a time."""
    hits = []
    for i, e in enumerate(errors):
        if det.update(float(e)):
            hits.append(i)
    return hits


def test_cusum_closed_form_equals_recursion() -> None:
    rng = np.random.default_rng(14)
    errors = np.concatenate([rng.random(2000) < 0.1, rng.random(3000) < 0.3]).astype(float)
    a, b = ErrorCusum(warmup=500), ErrorCusum(warmup=500)
    assert a.update_many(errors[:700]) is None and not _loop_cusum(b, errors[:700])
    errors = errors[700:]
    first = a.update_many(errors)
    hits = _loop_cusum(b, errors)
    assert first == hits[0] and a.alarms == b.alarms == len(hits)
    assert a.statistic == pytest.approx(b.statistic)


def test_cusum_quiet_on_unchanged_error_rate() -> None:
    rng = np.random.default_rng(15)
    det = ErrorCusum(warmup=500)  # this seed's warm-up estimate is 2 standard errors low
    assert det.update_many((rng.random(100_000) < 0.1).astype(float)) is None
    assert det.alarms == 0 and det.baseline == pytest.approx(0.076, abs=0.002)
    rng = np.random.default_rng(15)
    bare = ErrorCusum(warmup=500, baseline_margin=0.0)  # the control: without the margin it false-alarms
    assert bare.update_many((rng.random(100_000) < 0.1).astype(float)) is not None


def test_cusum_detects_error_rise_soon_after_onset() -> None:
    rng = np.random.default_rng(16)
    before, after = (rng.random(5000) < 0.1).astype(float), (rng.random(2000) < 0.25).astype(float)
    det = ErrorCusum(warmup=500)
    assert det.update_many(before) is None
    hit = det.update_many(after)
    assert hit is not None and hit < 400


def test_cusum_no_alarm_during_warmup_and_state_round_trips() -> None:
    rng = np.random.default_rng(17)
    errors = (rng.random(3000) < 0.1).astype(float)
    errors[:400] = 1.0  # terrible start, but it is the warm-up: it sets the baseline, never alarms
    whole = ErrorCusum(warmup=500)
    assert whole.update_many(errors[:500]) is None
    split = ErrorCusum.from_dict(json.loads(json.dumps(whole.to_dict())))
    tail = (rng.random(4000) < 0.5).astype(float)
    assert whole.update_many(tail) == split.update_many(tail)
    assert whole.to_dict() == split.to_dict()


def test_cusum_gaussian_kind_detects_mean_rise() -> None:
    rng = np.random.default_rng(18)
    det = ErrorCusum(kind="gaussian", warmup=500)
    assert det.update_many(np.abs(rng.normal(size=20_000))) is None
    assert det.update_many(np.abs(rng.normal(size=2000)) * 1.5) is not None
