"""``selfheal serve`` and every selfheal command: MLflow's unpickling off, the artifact root handed to the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from flows.cli.serve import server_environment
from flows.config import ConfigError, SelfhealConfig, load_config


def test_the_server_gets_the_artifact_root_and_no_unpickling(tmp_path: Path) -> None:
    cfg = SelfhealConfig(home=str(tmp_path), trainer={"trusted_types": ["my.pkg.Type"]})
    env = server_environment(cfg, 8765, base={"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"})
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert env["SELFHEAL_ARTIFACT_ROOT"] == str(tmp_path / "artifacts") == cfg.artifact_root
    assert json.loads(env["SELFHEAL_TRUSTED_TYPES"]) == ["my.pkg.Type"]
    assert env["SELFHEAL_MODEL_CACHE_DIR"] == str(tmp_path / "serving" / "model-cache")  # under the serving home


def test_the_server_gets_the_labels_feedback_may_carry(tmp_path: Path) -> None:
    cfg = SelfhealConfig(home=str(tmp_path), data={"task": "multiclass", "expectations": {"label_values": [0, 1, 2]}})
    env = server_environment(cfg, 8765, base={})
    assert env["SELFHEAL_TASK"] == "multiclass"
    assert json.loads(env["SELFHEAL_LABEL_VALUES"]) == [0, 1, 2]
    assert "SELFHEAL_LABEL_VALUES" not in server_environment(SelfhealConfig(home=str(tmp_path)), 8765, base={})


def test_every_command_switches_unpickling_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


def test_serve_reads_the_config_without_importing_scikit_learn(tmp_path: Path) -> None:
    """The server trains nothing: `selfheal serve` skips the estimator check (seconds of imports before its exec)."""
    file = tmp_path / "selfheal.yaml"
    file.write_text(f"home: {tmp_path}\ntrainer:\n  estimator: sklearn.ensemble.HistGradientBoostingClassifier\n")
    code = (
        "import sys; from flows.cli.command import config; cfg = config(check_estimator=False); "
        "print(cfg.trainer.estimator, 'sklearn' in sys.modules)"
    )
    env = {**os.environ, "SELFHEAL_CONFIG": str(file)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["sklearn.ensemble.HistGradientBoostingClassifier", "False"]


def test_other_commands_still_check_the_estimator(tmp_path: Path) -> None:
    file = tmp_path / "selfheal.yaml"
    file.write_text("trainer:\n  estimator: json.JSONDecoder\n")
    with pytest.raises(ConfigError, match="not a scikit-learn estimator"):
        load_config(file)
    assert load_config(file, check_estimator=False).trainer.estimator == "json.JSONDecoder"


def test_servers_sharing_a_port_get_runtime_folders_of_their_own(tmp_path: Path) -> None:
    cfg = SelfhealConfig(home=str(tmp_path))
    folders = {
        server_environment(cfg, 8765, base={}, instance=instance)["SELFHEAL_RUNTIME_DIR"]
        for instance in (None, "1", "2")
    }
    assert len(folders) == 3  # admin state and Prometheus files of one server are not another's
