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
    Sandbox(tmp_path / "home" / "chaos" / "sandbox-healing-off").down()


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


@pytest.mark.matrix
@pytest.mark.timeout(3600)
def test_the_matrix_every_experiment_as_its_class_says(
    project: Path, tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`selfheal chaos run --matrix`: every local experiment with healing on, then off.

    Not in the default run (``-m matrix``): 23-29 min on 2 cores, so ``make test`` runs
    it alone, after the rest of the suite (its verdicts are timed).

    ``healed`` experiments must meet their SLA with healing on and miss it with healing
    off; ``absorbed`` ones must meet it both ways. Network experiments need root, ``ip
    netns`` and tc; where they cannot run they are reported as skipped with the reason
    (never silently passed).
    """
    from flows.chaos_suite.flow import MatrixFailed, chaos_suite_flow, experiment_paths
    from flows.chaos_suite.matrix import MatrixResult
    from flows.chaos_suite.report import render_matrix_table

    try:
        result = chaos_suite_flow(config_path=str(project), matrix=True)
    except MatrixFailed as failed:
        result = failed.result
    assert isinstance(result, MatrixResult)
    table = render_matrix_table(result)
    details = [
        f"{r.name} (healing {label}): {f}"
        for label, run in (("on", result.on), ("off", result.off))
        for r in run.results
        for f in r.failures
    ]
    with capsys.disabled():  # the matrix in the CI log, passed or not
        print(f"\n{table}\n" + "\n".join(result.problems))  # noqa: T201
    assert not result.problems, f"{table}\n" + "\n".join(result.problems + details)
    assert result.on.healing_enabled is True and result.off.healing_enabled is False
    names = [p.stem for p in experiment_paths()]
    assert [r.name for r in result.on.results] == [r.name for r in result.off.results] == names
    ran = [r for r in result.on.results if r.verdict != "skipped"]
    for r in result.on.results:
        if r.verdict == "skipped":
            assert r.name.startswith("network-") and r.failures[0].startswith("needs root"), r
        else:
            assert r.verdict == "met" and r.mttr_seconds is not None and r.mttr_seconds <= r.mttr_sla_seconds, r
            assert r.timeline is not None and r.timeline.series, r.name
    # Every healing-off miss is about recovery: steady before, the fault injected, the hypothesis checked.
    assert all(r.tested for r in result.off.results if r.verdict != "skipped")
    expected_off = {r.name: "missed" if r.proves == "healed" else "met" for r in ran}
    assert {r.name: r.verdict for r in result.off.results if r.name in expected_off} == expected_off
    assert Path(result.report_html or "").read_text().count("<svg") > len(ran)
    from checkpoints import Lake
    from flows.chaos_suite.report import CHAOS_RUNS

    rows = Lake(tmp_path / "home" / "lake").read(CHAOS_RUNS).to_pylist()
    assert sorted((r["experiment"], r["healing_enabled"]) for r in rows) == sorted(
        (n, healing) for n in names for healing in (True, False)
    )
    assert Sandbox(tmp_path / "home" / "chaos" / "sandbox").state() is None
