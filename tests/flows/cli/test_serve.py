"""``selfheal serve`` and every selfheal command: MLflow's unpickling off, the artifact root handed to the server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.cli import main
from flows.cli.serve import server_environment
from flows.config import SelfhealConfig


def test_the_server_gets_the_artifact_root_and_no_unpickling(tmp_path: Path) -> None:
    cfg = SelfhealConfig(home=str(tmp_path), trainer={"trusted_types": ["my.pkg.Type"]})
    env = server_environment(cfg, 8765, base={"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"})
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert env["SELFHEAL_ARTIFACT_ROOT"] == str(tmp_path / "artifacts") == cfg.artifact_root
    assert json.loads(env["SELFHEAL_TRUSTED_TYPES"]) == ["my.pkg.Type"]


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
