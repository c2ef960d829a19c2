"""The selfheal control's teardown: a sandbox it started is stopped once, after the experiment or at cleanup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import control
from chaos.sandbox import Sandbox
from serving import processes


@pytest.fixture
def started_sandbox(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A sandbox folder with one running process (its pid file in run/), as if this control had started it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "server.pid").write_text(str(proc.pid))
    control._started.append(Sandbox(tmp_path))
    yield proc
    control._started.clear()
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("hook", ["after_experiment", "cleanup"])
def test_the_control_stops_the_sandbox_it_started(
    hook: str, started_sandbox: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    if hook == "after_experiment":
        control.after_experiment_control({"title": "t"})
    else:
        control.cleanup_control()
    assert started_sandbox.wait(10) is not None and not processes.alive(started_sandbox.pid)
    assert not (tmp_path / "run" / "server.pid").exists()
    assert control._started == []
    control.cleanup_control()  # cleanup after the experiment's own teardown: nothing left to stop
