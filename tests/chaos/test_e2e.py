"""End to end: a real sandbox, real faults, the real Chaos Toolkit CLI and the suite flow.

Slow (a sandbox trains its first champion and starts a server, a healer, clients): still
run by default, as CI runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from chaos.sandbox import Sandbox
from serving import processes
from tests.chaos.conftest import REPO_ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the project's selfheal.yaml with its home (lake, reports, sandbox) under tmp_path."""
    cfg = yaml.safe_load((REPO_ROOT / "selfheal.yaml").read_text())
    cfg.update({"home": str(tmp_path / "home"), "lake": {"root": str(tmp_path / "home" / "lake")}})
    path = tmp_path / "selfheal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path
    Sandbox(tmp_path / "home" / "chaos" / "sandbox").down()


def test_chaos_toolkit_cli_runs_an_experiment_on_its_own(project: Path, tmp_path: Path) -> None:
    """`chaos run <experiment>` with nothing running: the control builds a sandbox, and stops it after."""
    root = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env.update({"SELFHEAL_CHAOS_SANDBOX": str(root), "SELFHEAL_CHAOS_PROJECT_CONFIG": str(project)})
    journal = tmp_path / "journal.json"
    chaos = Path(sys.executable).parent / "chaos"
    done = subprocess.run(
        [
            str(chaos),
            "--no-log-file",
            "run",
            "--journal-path",
            str(journal),
            "chaos/experiments/serving-kill-worker.yaml",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(journal.read_text())
    assert result["status"] == "completed" and not result["deviated"]
    assert [r["status"] for r in result["rollbacks"]] == ["succeeded"]
    killed = result["run"][0]["output"]
    assert not processes.alive(killed["pid"])
    # The control stopped the sandbox it started: no process of it is left.
    assert Sandbox(root).state() is None
    assert not any((root / "run").glob("*.pid"))
    assert not processes.alive(killed["master"])


@pytest.mark.suite
@pytest.mark.timeout(2400)
def test_whole_suite_with_healing_meets_every_local_sla(
    project: Path, tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`selfheal chaos run` as CI runs it: every local experiment, one sandbox, healing on, the project's SLAs.

    Network experiments need root, ``ip netns`` and tc; where they cannot run they are
    reported as skipped with the reason (never silently passed).
    """
    from flows.chaos_suite.flow import SLAMissed, chaos_suite_flow, experiment_paths
    from flows.chaos_suite.report import render_table

    try:
        result = chaos_suite_flow(config_path=str(project))
    except SLAMissed as missed:
        result = missed.result
        details = [f"{r.name}: {f}" for r in result.results for f in r.failures if r.verdict == "missed"]
        pytest.fail(f"SLA missed:\n{render_table(result)}\n" + "\n".join(details))
    with capsys.disabled():  # the SLA table in the CI log, passed or not
        print(f"\n{render_table(result)}")  # noqa: T201
    assert result.healing_enabled is True
    assert [r.name for r in result.results] == [p.stem for p in experiment_paths()]
    for r in result.results:
        if r.verdict == "skipped":
            assert r.name.startswith("network-") and r.failures[0].startswith("needs root"), r
        else:
            assert r.verdict == "met" and r.mttr_seconds is not None and r.mttr_seconds <= r.mttr_sla_seconds, r
    assert Sandbox(tmp_path / "home" / "chaos" / "sandbox").state() is None


def test_suite_without_healing_fails_naming_the_experiments_that_missed(
    project: Path, tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoints import Lake
    from flows.chaos_suite.flow import SLAMissed, chaos_suite_flow
    from flows.chaos_suite.report import CHAOS_RUNS

    monkeypatch.setenv("SELFHEAL_HEALING__ENABLED", "false")
    monkeypatch.setenv("SELFHEAL_SLAS__MTTR_SECONDS", '{"default": 20}')
    with pytest.raises(SLAMissed, match="SLA missed by serving-kill-server$") as missed:
        chaos_suite_flow(names=["serving-kill-worker", "serving-kill-server"], config_path=str(project))
    result = missed.value.result
    assert result.healing_enabled is False
    verdicts = {r.name: r.verdict for r in result.results}
    assert verdicts == {"serving-kill-worker": "met", "serving-kill-server": "missed"}
    server = next(r for r in result.results if r.name == "serving-kill-server")
    assert server.mttr_sla_seconds == 20 and server.mttr_seconds is None
    assert any("not met within 20s" in f for f in server.failures), server.failures
    rows = Lake(tmp_path / "home" / "lake").read(CHAOS_RUNS).to_pylist()
    assert {(r["experiment"], r["verdict"]) for r in rows} == set(verdicts.items())
    assert Path(result.report_markdown or "").read_text().count("MISSED") == 1
    assert Path(result.report_html or "").exists()
    assert Sandbox(tmp_path / "home" / "chaos" / "sandbox").state() is None
