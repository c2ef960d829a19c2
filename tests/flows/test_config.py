"""The config's validation of what a person writes in selfheal.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import ConfigError, ReleaseConfig, SelfhealConfig, load_config
from flows.metrics import COMPUTED


def test_config_refuses_a_bad_condition_and_accepts_argo_spelling() -> None:
    cfg = ReleaseConfig(metrics={"quality": {"successCondition": "result >= 0", "failureLimit": 2}})  # type: ignore[dict-item]
    assert cfg.metrics["quality"].success_condition == "result >= 0" and cfg.metrics["quality"].failure_limit == 2
    assert set(cfg.metrics) == {"error_rate", "latency_p99_ms", "prediction_distance", "quality"}
    with pytest.raises(ValueError, match="unknown name"):
        ReleaseConfig(metrics={"quality": {"failure_condition": "accuracy < 1"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown analysis metric"):
        ReleaseConfig(metrics={"throughput": {}})  # type: ignore[dict-item]


# -- config mistakes fail at load, naming the key (issue 15); each passed load on d5107c0 -------
def _load(tmp_path: Path, text: str) -> SelfhealConfig:
    path = tmp_path / "selfheal.yaml"
    path.write_text(text)
    return load_config(path)


def test_a_reversed_range_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.expectations\.ranges: amount: \[50000.0, 0.0\] is reversed"):
        _load(tmp_path, "data: {expectations: {ranges: {amount: [50000, 0]}}}")
    with pytest.raises(ConfigError, match=r"ranges: hour: .* \(nan\)"):
        _load(tmp_path, "data: {expectations: {ranges: {hour: [.nan, 23]}}}")
    assert _load(tmp_path, "data: {expectations: {ranges: {hour: [3, 3]}}}").data.expectations.ranges["hour"] == (3, 3)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("gate: {metric: accuracyy}", "gate.metric: 'accuracyy'"),  # base: every run "rejected ... nan", exit 0
        ("data: {task: regression}\ngate: {metric: roc_auc}", "gate.metric: 'roc_auc'"),
        ("data: {task: binary}\ngate: {metric: r2}", "gate.metric: 'r2'"),
        ("release: {quality_metric: rmse}", "release.quality_metric: 'rmse'"),
        ("data: {task: multiclass}\ngate: {metric: roc_auc}", "release.quality_metric: 'roc_auc' (unset: gate.metric"),
    ],
)
def test_a_metric_the_task_never_computes_fails_at_load(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        _load(tmp_path, text)


def test_every_default_metric_is_one_the_task_computes(tmp_path: Path) -> None:
    for task in ("binary", "multiclass", "regression"):
        cfg = _load(tmp_path, f"data: {{task: {task}}}")
        assert cfg.gate_metric in COMPUTED["holdout"][task] and cfg.gate_metric in COMPUTED["feedback"][task]
    assert _load(tmp_path, "gate: {metric: average_precision}\nrelease: {quality_metric: brier}").gate_metric == (
        "average_precision"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainer: {estimator: os.system}", "trainer.estimator: 'os.system' is not a class"),
        ("trainer: {estimator: subprocess.Popen}", "trainer.estimator: 'subprocess.Popen' is not a scikit-learn"),
        ("trainer: {estimator: no_such_package.Model}", "trainer.estimator: cannot import 'no_such_package'"),
        ("trainer: {estimator: sklearn.ensemble.NoSuchThing}", "'sklearn.ensemble.NoSuchThing' is not a class"),
        (
            "trainer: {estimator: sklearn.linear_model.LinearRegression}",
            "'sklearn.linear_model.LinearRegression' is not a classifier and data.task is 'binary'",
        ),
        (
            "data: {task: regression}\ntrainer: {estimator: sklearn.linear_model.LogisticRegression}",
            "is not a regressor and data.task is 'regression'",
        ),
        (
            "trainer: {estimator: sklearn.linear_model.LogisticRegression, params: {bogus: 1}}",
            "trainer.params: sklearn.linear_model.LogisticRegression does not take them",
        ),
    ],
)
def test_an_estimator_that_is_not_a_scikit_learn_one_for_the_task_fails_at_load(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, text)


def test_the_shipped_config_and_a_compatible_estimator_load(tmp_path: Path) -> None:
    shipped = load_config(Path(__file__).parents[2] / "selfheal.yaml")
    assert shipped.trainer.estimator == "sklearn.ensemble.HistGradientBoostingClassifier"
    regression = _load(tmp_path, "data: {task: regression}\ntrainer: {estimator: sklearn.linear_model.Ridge}")
    assert regression.trainer.estimator == "sklearn.linear_model.Ridge"


def test_the_cli_says_a_config_mistake_in_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "selfheal.yaml"
    path.write_text(f"home: {tmp_path / 'home'}\ngate: {{metric: accuracyy}}\ntrainer: {{estimator: os.system}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    selfheal = Path(sys.executable).with_name("selfheal")
    done = subprocess.run(
        [str(selfheal), "-c", str(path), "lake", "status"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr  # base: 1, the errors on lines of their own
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"selfheal: error: {path}: invalid configuration: ")
    assert "gate.metric: 'accuracyy'" in line and "trainer.estimator: 'os.system' is not a class" in line


def test_duplicate_handling_defaults_by_id_columns_and_refuses_an_unknown_mode(tmp_path: Path) -> None:
    assert _load(tmp_path, "data: {}").data.duplicate_handling == "keep"  # identical records are legitimate
    assert _load(tmp_path, "data: {id_columns: [tx]}").data.duplicate_handling == "quarantine"
    chosen = _load(tmp_path, "data: {id_columns: [tx], expectations: {duplicates: drop}}")
    assert chosen.data.duplicate_handling == "drop"
    with pytest.raises(ConfigError, match=r"data\.expectations\.duplicates: .*'keep', 'drop' or 'quarantine'"):
        _load(tmp_path, "data: {expectations: {duplicates: remove}}")
