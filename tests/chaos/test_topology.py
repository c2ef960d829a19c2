"""The production topology's activities on their own (the faults whole: `selfheal chaos run --profile production`)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaoslib.exceptions import ActivityFailed

from chaos.topology import _stack, actions, probes
from serving import processes


@pytest.fixture
def gateway() -> Iterator[str]:
    """A real HTTP server standing in for the S3 gateway (any answer counts as up)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _stack_run(tmp_path: Path, endpoint: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    production = {"environment": {"MLFLOW_S3_ENDPOINT_URL": endpoint}, "postgres_data": str(tmp_path / "pg")}
    (run / "production.json").write_text(json.dumps(production))
    return run


def test_each_action_names_the_missing_stack(tmp_path: Path) -> None:
    for act in (actions.stop_postgres, actions.start_postgres, actions.stop_object_store):
        with pytest.raises(ActivityFailed, match=r"no production stack at .*production\.json"):
            act(str(tmp_path))


def test_the_store_watch_fails_as_soon_as_the_store_answers(tmp_path: Path, gateway: str) -> None:
    with pytest.raises(ActivityFailed, match=r"answered 0\.\d s into a 5 s outage"):
        probes.seconds_object_store_stays_down(str(_stack_run(tmp_path, gateway)), hold_seconds=5)


def test_the_store_watch_returns_the_seconds_a_refused_endpoint_stayed_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{processes.free_port()}"
    assert probes.seconds_object_store_stays_down(str(_stack_run(tmp_path, dead)), 0.3, interval=0.1) >= 0.3


def test_a_stopped_store_starts_again_from_its_command_line_with_its_pid_file_rewritten(tmp_path: Path) -> None:
    """stop_object_store keeps the command line; start_object_store runs it again and records the new process."""
    port = processes.free_port()
    run = _stack_run(tmp_path, f"http://127.0.0.1:{port}")
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    first = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _stack.record_pid(str(run), "object-store", first.pid)
        processes.wait_until(lambda: _stack.store_answers(f"http://127.0.0.1:{port}"), 30, "the stand-in store")
        stopped = actions.stop_object_store(str(run))
        assert first.pid in stopped["stopped"] and first.wait(10) is not None
        started = actions.start_object_store(str(run), timeout=30)
        recorded = json.loads((run / "object-store.pid").read_text())
        assert recorded["pid"] == started["pid"] != first.pid and recorded["argv"] == argv
        assert actions.start_object_store(str(run)) == {"running": True}  # nothing left to start
    finally:
        processes.stop(processes.process_tree(_stack.pid(str(run), "object-store")), grace=5)
        first.kill()


def test_a_killed_worker_starts_again_as_it_ran_with_its_pid_file_rewritten(tmp_path: Path) -> None:
    run = _stack_run(tmp_path, "http://127.0.0.1:1")
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    _stack.save_command(str(run), "prefect-worker-1", {"argv": argv, "cwd": str(tmp_path), "env": {"X": "1"}})
    started = actions.restart_killed_worker(str(run))["started"]
    try:
        assert (
            list(started) == ["prefect-worker-1"]
            and _stack.pid(str(run), "prefect-worker-1") == started["prefect-worker-1"]
        )
        assert actions.restart_killed_worker(str(run)) == {"started": {}}  # nothing left to start
    finally:
        processes.stop([started["prefect-worker-1"]], grace=5)
