"""``selfheal monitor --once`` and ``selfheal heal --once`` without a Prefect API start no Prefect server.

Each command runs as a real process against a real lake (silver plus a served model's
inference log, shifted so the drift detector fires) and a real MLflow sqlite store,
with no ``PREFECT_API_URL``. Prefect's ephemeral server would be a child process
(uvicorn serving ``prefect.server``) and a database under ``PREFECT_HOME``; neither may
appear, and the pass must still do its work: signals recorded, an incident opened.
Nor may the process import Prefect, MLflow or scikit-learn (seconds of imports each)
when the store holds a champion: its look-up reads the store without MLflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from checkpoints import Lake
from checkpoints.incidents import IncidentLog
from checkpoints.metrics import METRICS_TABLE
from tests.flows.monitor.fixtures import write_predictions, write_silver

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _drifted_lake(tmp_path: Path, shift: float = 1.5) -> tuple[Lake, dict[str, str]]:
    """A lake whose last minutes of traffic drifted (by ``shift``), a config for it, and the environment to run in."""
    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    write_silver(lake, rng)
    now = datetime.now(UTC)
    for minute in range(4):  # one small commit per minute of traffic, as the server's log writer makes
        write_predictions(lake, rng, 300, now - timedelta(minutes=5 - minute), prefix=f"m{minute}-", shift=shift)
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


def _register_champion(tracking_uri: str) -> str:
    """A champion in the real MLflow store (its run with a holdout metric, silver version 0); its version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry an earlier test set
    experiment = client.create_experiment("one-shot")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "roc_auc", 0.91)
    client.create_registered_model("fraud-detector")
    mv = client.create_model_version("fraud-detector", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_model_version_tag("fraud-detector", mv.version, "selfheal.silver_version", "0")
    client.set_registered_model_alias("fraud-detector", "champion", mv.version)
    return str(mv.version)


#: Run the CLI and report what the process imported; then read the champion as the pass did.
_IMPORTS_SEEN = """
import json, sys
from flows.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("prefect", "mlflow", "sklearn") if m in sys.modules)
from flows.config import load_config
from flows.monitor.flow import champion_context
cfg = load_config()
champion = champion_context(cfg.model_name, cfg.tracking_uri)
seen = {"code": code, "champion": champion.version, "metrics": champion.metrics, "heavy": heavy}
print("IMPORTS " + json.dumps(seen))
"""


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


def _imports_seen(tmp_path: Path, argv: list[str], shift: float) -> tuple[dict[str, Any], str, str]:
    """Run ``selfheal argv`` on a lake with a champion; what ``_IMPORTS_SEEN`` reported, the output, the version."""
    _, env = _drifted_lake(tmp_path, shift)
    version = _register_champion(env["SELFHEAL_TRACKING_URI"])
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_SEEN, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    report = next((line for line in done.stdout.splitlines() if line.startswith("IMPORTS ")), None)
    assert report is not None, out
    return json.loads(report.split(" ", 1)[1]), out, version


def test_a_one_shot_monitor_pass_imports_neither_prefect_nor_mlflow(tmp_path: Path) -> None:
    """The pass runs and reads the champion with no Prefect, MLflow or scikit-learn in the process.

    (scipy.stats is imported: the drift window it tests needs its KS distribution.)
    """
    seen, out, version = _imports_seen(tmp_path, ["monitor", "--once", "--no-serving"], shift=1.5)
    assert seen["code"] == 0, out
    assert seen["champion"] == version and seen["metrics"] == {"roc_auc": 0.91}, out
    assert "registry unavailable" not in out, out  # the pass itself read the champion too
    assert "data_drift" in out, out  # and did its work
    assert seen["heavy"] == [], out


def test_a_one_shot_healer_tick_imports_neither_prefect_nor_mlflow(tmp_path: Path) -> None:
    """A tick with nothing to repair (probes, monitor pass, incident log) loads no Prefect, MLflow or scikit-learn.

    (A tick that opens a drift incident loads the pre-drift model to locate the change:
    that needs MLflow's model format and scikit-learn, and is not this test.)
    """
    seen, out, version = _imports_seen(tmp_path, ["heal", "--once"], shift=0.0)
    assert seen["code"] == 0, out
    assert seen["champion"] == version, out
    assert "registry unavailable" not in out and "tracking store" not in out, out
    assert "selfheal heal: one tick" in out and " open " not in out, out  # it ticked, nothing to repair
    assert seen["heavy"] == [], out
