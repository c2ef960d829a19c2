"""The sandbox's own config (no processes started here: the e2e tests run whole sandboxes)."""

from __future__ import annotations

from pathlib import Path

from chaos.sandbox import STREAM_DATA, Sandbox
from flows.config import load_config
from flows.monitor.detectors.thresholds import MonitorThresholds


def test_a_sandbox_without_a_project_config_describes_its_own_stream(tmp_path: Path) -> None:
    """Run in an empty folder, the sandbox's config still names the stream's id column (else ids read as features)."""
    box = Sandbox(tmp_path / "box", project_config=tmp_path / "missing.yaml")
    box.root.mkdir(parents=True)
    cfg = box._write_config(port=1)
    assert cfg["data"] == STREAM_DATA
    assert load_config(box.config_path).data.id_columns == ["transaction_id"]
    assert load_config(box.config_path).trainer.window_batches == 2  # a drift repair learns the world as it is now
    project = tmp_path / "selfheal.yaml"
    project.write_text("data: {target: is_fraud, id_columns: [txn]}\ntrainer: {seed: 1}\n")
    ours = Sandbox(tmp_path / "box", project_config=project)._write_config(port=1)
    assert ours["data"]["id_columns"] == ["txn"] and ours["trainer"] == {"seed": 1}  # the project's own, whole


def test_the_sandbox_config_loads_with_its_thresholds(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box", project_config=tmp_path / "missing.yaml")
    box.root.mkdir(parents=True)
    box._write_config(port=1)
    thresholds = MonitorThresholds.from_mapping(load_config(box.config_path).thresholds)
    assert thresholds.consecutive["missing_rows"] == 10 and thresholds.consecutive["serving_down"] == 2


def test_restarting_the_healer_leaves_a_server_it_started_in_its_own_session_running() -> None:
    import subprocess
    import sys

    from chaos.sandbox import stop_own_group
    from serving import processes

    # A "healer" in its own session (as the sandbox starts it) that starts a "server" in another.
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    healer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert healer.stdout is not None
    server = int(healer.stdout.readline())
    try:
        assert server in processes.process_tree(healer.pid)  # what a tree stop would have taken down too
        assert stop_own_group(healer.pid, 5.0) == [healer.pid]
        assert healer.wait(timeout=10) is not None and processes.alive(server)
    finally:
        processes.stop([server, healer.pid], grace=2.0)
