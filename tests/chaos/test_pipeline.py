"""Killing a pipeline run mid-stage (real processes, real lake commits) and the caught-up probe."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import _landing, ledger
from chaos.pipeline import actions, probes
from checkpoints import Lake
from flows.demo.data import write_batches
from serving import processes

#: A stand-in pipeline: it lands bronze, then silver, then "trains" (sleeps) and writes a manifest.
FAKE_PIPELINE = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from checkpoints import Lake
    lake = Lake(sys.argv[1])
    time.sleep(float(sys.argv[2]))
    lake.append("bronze", pa.table({"x": [1]}))
    time.sleep(0.5)
    lake.append("silver", pa.table({"x": [1]}))
    time.sleep(float(sys.argv[3]))
    lake.write_manifest("run", {"bronze": lake.version("bronze"), "silver": lake.version("silver")})
    """
)


@pytest.fixture
def fake_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "fake_pipeline.py"
    path.write_text(FAKE_PIPELINE)
    return path


def test_kill_in_training_leaves_no_manifest(fake_pipeline: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    lake = tmp_path / "lake"
    command = [sys.executable, str(fake_pipeline), str(lake), "0.5", "30"]
    done = actions.kill_pipeline_run(
        str(lake), stage="train", delay=0.5, command=command, timeout=60, configuration=config
    )
    assert done["stage"] == "train" and 1.0 < done["lived_seconds"] < 30
    assert all(not processes.alive(pid) for pid in done["pids"])
    assert Lake(lake).version("silver") == 0 and Lake(lake).last_manifest() is None
    assert ledger.last_event(config, "fault") == done["at"]
    (tmp_path / "landing").mkdir()
    # The killed run left bronze ahead of any complete manifest: the next run has work to finish.
    assert _landing.unfinished(str(tmp_path / "landing"), str(lake)) == (
        "bronze is at version 0, the last complete run left it at None"
    )


def test_kill_a_run_someone_else_started(fake_pipeline: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    marker = f"marker-{time.time_ns()}"
    runs: list[subprocess.Popen[bytes]] = []
    argv = [sys.executable, str(fake_pipeline), str(lake), "1.0", "30", marker]
    starter = threading.Timer(0.5, lambda: runs.append(subprocess.Popen(argv, cwd=tmp_path)))
    starter.start()
    try:
        done = actions.kill_pipeline_run(str(lake), stage="features", match=[str(fake_pipeline), marker], timeout=60)
        assert done["pids"][0] == runs[0].pid
        assert runs[0].wait(10) == -9
        assert Lake(lake).exists("bronze") and not Lake(lake).exists("silver")
    finally:
        starter.join()
        for run in runs:
            run.kill()


def test_a_run_that_ends_short_of_the_stage_is_let_be_and_the_next_one_killed(
    fake_pipeline: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    marker = f"marker-{time.time_ns()}"
    # A run that has nothing to do (all quarantined, say) and ends, then the schedule's next one.
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)", marker])
    later: list[subprocess.Popen[bytes]] = []
    argv = [sys.executable, str(fake_pipeline), str(lake), "0.5", "30", marker]
    threading.Timer(1.5, lambda: later.append(subprocess.Popen(argv))).start()
    try:
        done = actions.kill_pipeline_run(str(lake), stage="train", delay=0.2, match=[marker], timeout=60)
        assert later and done["pids"][0] == later[0].pid
        assert short.wait(5) == 0 and later[0].wait(10) == -9
    finally:
        short.kill()
        for proc in later:
            proc.kill()


def test_no_run_reaching_the_stage_fails_after_the_timeout(tmp_path: Path) -> None:
    with pytest.raises(ActivityFailed, match="no pipeline run reached 'train' within 0.5s"):
        actions.kill_pipeline_run(str(tmp_path / "lake"), match=["no-such-program-anywhere"], timeout=0.5)


def test_a_run_that_ends_before_the_stage_fails_the_action(tmp_path: Path) -> None:
    with pytest.raises(ActivityFailed, match="ended after .* before reaching 'train'"):
        actions.kill_pipeline_run(str(tmp_path / "lake"), command=[sys.executable, "-c", "pass"], timeout=30)


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of command"):
        actions.kill_pipeline_run(str(tmp_path), command=["x"], match=["y"])
    with pytest.raises(ValueError, match="stage must be one of"):
        actions.kill_pipeline_run(str(tmp_path), stage="deploy", command=["x"])


def _land_all(lake: Lake, landing: Path) -> None:
    for path in _landing.batch_files(landing):
        lake.append("bronze", pa.table({"f": [path.name]}), key=_landing.sha256(path))


def test_caught_up_both_ways(tmp_path: Path, config: dict[str, Any]) -> None:
    landing = tmp_path / "landing"
    write_batches(str(landing), batches=2, rows=100, seed=1)
    lake = Lake(tmp_path / "lake")
    lake.write_manifest("before-the-fault", {})
    with pytest.raises(ActivityFailed, match="2 missing"):
        probes.seconds_until_pipeline_caught_up(str(landing), str(lake.root), timeout=0.3, configuration=config)
    _land_all(lake, landing)
    assert probes.seconds_until_pipeline_caught_up(str(landing), str(lake.root), timeout=1, configuration=config) < 1
    write_batches(str(landing), batches=1, rows=100, seed=1, start=2)
    ledger.record(config, "fault", fault="kill_pipeline_run")
    with pytest.raises(
        ActivityFailed, match="last complete manifest: .*; 2 landed, .*, 0 quarantined unrepaired, 1 missing"
    ):
        probes.seconds_until_pipeline_caught_up(str(landing), str(lake.root), timeout=0.5, configuration=config)
    _land_all(lake, landing)
    with pytest.raises(ActivityFailed, match="3 landed"):  # rows are in, but no run completed since the fault
        probes.seconds_until_pipeline_caught_up(str(landing), str(lake.root), timeout=0.5, configuration=config)
    lake.write_manifest("after-the-fault", {"bronze": lake.version("bronze")})
    assert probes.seconds_until_pipeline_caught_up(str(landing), str(lake.root), timeout=5, configuration=config) < 5


def test_run_pipeline_if_behind(fake_pipeline: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    landing = tmp_path / "landing"
    write_batches(str(landing), batches=1, rows=100, seed=1)
    lake = Lake(tmp_path / "lake")
    key = _landing.sha256(_landing.batch_files(landing)[0])
    catch_up = tmp_path / "catch_up.py"
    catch_up.write_text(
        "import sys, pyarrow as pa\nfrom checkpoints import Lake\n"
        f"lake = Lake(sys.argv[1])\nlake.append('bronze', pa.table({{'f': [1]}}), key={key!r})\n"
        "lake.write_manifest('catch-up', {'bronze': lake.version('bronze')})\n"
    )
    command = [sys.executable, str(catch_up), str(lake.root)]
    done = actions.run_pipeline_if_behind(
        str(landing), str(lake.root), command, cwd=str(tmp_path), configuration=config
    )
    assert done["ran"] is True and done["exit_code"] == 0 and "1 landed" in done["detail"]
    assert done["reason"] == "1 new landing file(s)"
    assert actions.run_pipeline_if_behind(str(landing), str(lake.root), command)["ran"] is False


def test_run_pipeline_if_behind_waits_for_a_run_already_going(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    marker = f"marker-{time.time_ns()}"
    going = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)", marker])
    started = time.monotonic()
    done = actions.run_pipeline_if_behind(str(landing), str(tmp_path / "lake"), ["false"], match=[marker])
    assert done["ran"] is False and time.monotonic() - started >= 1.0
    assert going.wait(5) == 0
