"""Estimators for pipeline tests, named in test configs by import path."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier

from serving.processes import wait_until


class SlowHistGradientBoostingClassifier(HistGradientBoostingClassifier):
    """Writes ``$SELFHEAL_TEST_FIT_MARKER`` when fit starts, then takes its time."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:  # noqa: N803
        marker = os.environ.get("SELFHEAL_TEST_FIT_MARKER")
        if marker:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(float(os.environ.get("SELFHEAL_TEST_FIT_SLEEP", "0")))
        return super().fit(X, y, sample_weight=sample_weight)


def slow_fit_env(marker: Path) -> dict[str, str]:
    """The environment of a CLI run whose fit writes ``marker`` when it starts, then sleeps a minute."""
    from prefect.settings import PREFECT_API_URL  # the CLI run's trainer imports this module: keep it light

    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SELFHEAL_TEST_FIT_MARKER": str(marker),
        "SELFHEAL_TEST_FIT_SLEEP": "60",
    }


def kill_once_fitting(proc: subprocess.Popen[str], marker: Path, timeout: float = 180.0) -> None:
    """SIGKILL ``proc`` (a CLI run) once its slow fit has started, i.e. mid-stage."""
    with contextlib.suppress(TimeoutError):  # the assert below says why
        wait_until(lambda: marker.exists() or proc.poll() is not None, timeout, "the fit to start", interval=0.2)
    assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "fit never started"
    proc.kill()
    proc.wait(timeout=30)


class BrokenClassifier(HistGradientBoostingClassifier):
    """Always fails to fit, like a stage that keeps failing after its retries."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:  # noqa: N803
        raise RuntimeError("training blew up")
