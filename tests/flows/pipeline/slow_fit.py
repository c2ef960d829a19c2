"""A CLI run killed while it fits: the slow trainer, the child process, the kill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL

from serving.processes import wait_until

REPO = Path(__file__).resolve().parents[3]

#: A trainer section whose fit writes ``$SELFHEAL_TEST_FIT_MARKER`` when it starts, then stalls.
SLOW_TRAINER: dict[str, Any] = {
    "estimator": "tests.flows.pipeline._estimators.SlowHistGradientBoostingClassifier",
    "params": {"max_iter": 30},
    "seed": 3,
    "trusted_types": ["tests.flows.pipeline._estimators.SlowHistGradientBoostingClassifier"],
}


def start_cli(config: Path, *command: str, marker: Path) -> subprocess.Popen[str]:
    """Run ``python -m flows.cli --config config *command``; a ``SLOW_TRAINER`` fit there writes ``marker``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SELFHEAL_TEST_FIT_MARKER": str(marker),
        "SELFHEAL_TEST_FIT_SLEEP": "60",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "--config", str(config), *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_9_mid_fit(proc: subprocess.Popen[str], marker: Path, timeout: float = 180.0) -> None:
    """Wait until the child's fit has started (``marker`` exists), then kill -9 it."""
    with contextlib.suppress(TimeoutError):  # the assert below says why
        wait_until(lambda: marker.exists() or proc.poll() is not None, timeout, "the fit to start", interval=0.2)
    assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "fit never started"
    proc.kill()
    proc.wait(timeout=30)
