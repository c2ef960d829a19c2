"""``selfheal monitor --once`` and ``selfheal heal --once`` without a Prefect API start no Prefect server.

Each command runs as a real process against a real lake (silver plus a served model's
inference log, shifted so the drift detector fires) and a real MLflow sqlite store,
with no ``PREFECT_API_URL``. Prefect's ephemeral server would be a child process
(uvicorn serving ``prefect.server``) and a database under ``PREFECT_HOME``; neither may
appear, and the pass must still do its work: signals recorded, an incident opened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest

from checkpoints import Lake
from checkpoints.incidents import IncidentLog
from checkpoints.metrics import METRICS_TABLE
from tests.flows.monitor.fixtures import write_predictions, write_silver

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _drifted_lake(tmp_path: Path) -> tuple[Lake, dict[str, str]]:
    """A lake whose last minutes of traffic drifted, a config for it, and the environment to run in."""
    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    write_silver(lake, rng)
    now = datetime.now(UTC)
    for minute in range(4):  # one small commit per minute of traffic, as the server's log writer makes
        write_predictions(lake, rng, 300, now - timedelta(minutes=5 - minute), prefix=f"m{minute}-", shift=1.5)
    (tmp_path / "landing").mkdir()
    config = tmp_path / "selfheal.yaml"
    config.write_text(
        f"home: {tmp_path / 'home'}\n"
        f"lake:\n  root: {lake.root}\n"
        f"landing:\n  path: {tmp_path / 'landing'}\n"
        "data:\n  target: is_fraud\n"
        "thresholds:\n  ingest_lag_seconds: 0\n  freshness_seconds: {}\n"
        "healing:\n  enabled: false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "SELFHEAL_"))}
    env.update(
        SELFHEAL_CONFIG=str(config),
        SELFHEAL_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    return lake, env


def _run_watching_children(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[str, list[str]]:
    """Run ``selfheal argv``; its output and the command lines of every child process seen while it ran."""
    command = [sys.executable, "-m", "flows.cli", *argv]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent, children = psutil.Process(proc.pid), set()
    while proc.poll() is None:
        try:
            for child in parent.children(recursive=True):
                children.add(" ".join(child.cmdline()))
        except psutil.Error:  # a child (or the command) exited between the look and the read
            pass
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out
    return out, sorted(children)


def _no_prefect_server(children: list[str], prefect_home: Path) -> None:
    assert not [c for c in children if "prefect" in c or "uvicorn" in c], children
    assert not (prefect_home / "prefect.db").exists()  # where the ephemeral server keeps its database


def test_monitor_once_records_its_signals_without_a_prefect_server(tmp_path: Path) -> None:
    lake, env = _drifted_lake(tmp_path)
    out, children = _run_watching_children(["monitor", "--once", "--no-serving"], env, tmp_path)
    _no_prefect_server(children, tmp_path / "prefect")
    assert "data_drift" in out
    recorded = lake.read(METRICS_TABLE)
    assert "drift.share" in recorded.column("name").to_pylist()


def test_heal_once_opens_the_incident_without_a_prefect_server(tmp_path: Path) -> None:
    lake, env = _drifted_lake(tmp_path)
    out, children = _run_watching_children(["heal", "--once"], env, tmp_path)
    _no_prefect_server(children, tmp_path / "prefect")
    opened = IncidentLog(lake).open_incidents()
    assert [i.cause for i in opened] == ["data_drift"], out
    assert "open " in out and "data_drift" in out
