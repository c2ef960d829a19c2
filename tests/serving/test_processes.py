"""Processes found, walked and stopped for real; the one wait loop; free ports."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serving import processes


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed with their groups at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        processes.kill(processes.process_tree(proc.pid), timeout=5)
        proc.wait(5)


def test_wait_until_returns_the_first_truthy_value() -> None:
    looks = itertools.count()
    assert processes.wait_until(lambda: next(looks) >= 3 and "done", 5, "three looks", interval=0.01) == "done"


def test_wait_until_names_what_it_waited_for_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"the answer \(last seen: \[\]\)"):
        processes.wait_until(list, 0.2, "the answer", interval=0.05)
    assert 0.2 <= time.monotonic() - started < 2
    with pytest.raises(ValueError):
        processes.wait_until(lambda: True, 1, "x", interval=0)


def test_free_port_is_free() -> None:
    port = processes.free_port()
    assert 0 < port < 65536 and not processes.port_in_use(port)
    assert not processes.http_ok(f"http://127.0.0.1:{port}/")


def test_find_sees_a_process_right_after_it_was_spawned(spawned: list[subprocess.Popen[bytes]]) -> None:
    marker = f"marker-{time.time_ns()}"
    spawned.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker]))
    # No wait: Popen returns while the child's new command line may still read empty.
    assert processes.find([marker]) == [spawned[0].pid]
    assert processes.find([marker, "not-there"]) == []
    assert marker in processes.argv(spawned[0].pid)


def test_pid_file_names_a_live_process_only(tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    spawned.append(subprocess.Popen(["sleep", "30"]))
    path = tmp_path / "x.pid"
    path.write_text(f"{spawned[0].pid}\n")
    assert processes.read_pid_file(path) == spawned[0].pid
    processes.kill([spawned[0].pid])
    assert processes.read_pid_file(path) is None and not processes.alive(spawned[0].pid)
    assert processes.read_pid_file(tmp_path / "missing.pid") is None


def test_the_tree_holds_descendants_in_other_sessions(spawned: list[subprocess.Popen[bytes]]) -> None:
    leader = subprocess.Popen(["bash", "-c", "setsid sleep 300 & sleep 300"], start_new_session=True)
    spawned.append(leader)

    def whole_tree() -> list[int]:
        tree = processes.process_tree(leader.pid)
        return tree if len(tree) == 3 else []

    tree = processes.wait_until(whole_tree, 10, "bash and its two sleeps")
    assert leader.pid in tree and processes.parent(tree[-1]) is not None
    assert set(processes.children(leader.pid)) < set(tree)
    assert processes.stop(tree, grace=5) == []
    assert not any(processes.alive(pid) for pid in tree)


def test_stop_kills_what_ignores_sigterm(spawned: list[subprocess.Popen[bytes]]) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    proc = subprocess.Popen([sys.executable, "-c", stubborn + "time.sleep(60)"], stdout=subprocess.PIPE)
    spawned.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert processes.stop([proc.pid], grace=0.5) == []
    assert 0.5 <= time.monotonic() - started < 5 and proc.wait(1) == -signal.SIGKILL  # not reaped by us


def test_a_zombie_counts_as_gone(spawned: list[subprocess.Popen[bytes]]) -> None:
    # The child exits at once; its parent never reaps it.
    script = "import os, time\nif os.fork() == 0:\n    os._exit(0)\ntime.sleep(300)"
    leader = subprocess.Popen([sys.executable, "-c", script])
    spawned.append(leader)

    def zombie() -> int | None:
        found = [c.pid for c in psutil.Process(leader.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
        return found[0] if found else None

    pid = processes.wait_until(zombie, 10, "a zombie child")
    started = time.monotonic()
    assert not processes.alive(pid) and processes.wait_gone([pid], 5) == [] and time.monotonic() - started < 1


def test_yield_cpu_lowers_a_session_leader_and_its_autogroup(spawned: list[subprocess.Popen[bytes]]) -> None:
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    member = subprocess.Popen(["sleep", "30"])  # in the test's own session: not its to lower
    spawned += [leader, member]
    session_nice = processes.autogroup_nice(member.pid)

    assert processes.yield_cpu(leader.pid) and processes.yield_cpu(member.pid)

    assert psutil.Process(leader.pid).nice() == psutil.Process(member.pid).nice() == processes.BACKGROUND_NICENESS
    if session_nice is None:
        pytest.skip("not in a session autogroup (none in this kernel, or a cpu cgroup of its own): nice is all")
    assert processes.autogroup_nice(leader.pid) == processes.BACKGROUND_NICENESS
    assert processes.autogroup_nice(member.pid) == session_nice  # the caller's session kept its weight


def test_run_yielding_lowers_only_the_work_and_hands_back_its_result_or_error() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    if before == processes.BACKGROUND_NICENESS:
        pytest.skip("the tests already run at nice 19: nothing could be lowered")
    assert processes.run_yielding(niceness) == processes.BACKGROUND_NICENESS
    assert niceness() == before  # the caller keeps its priority

    def fails() -> None:
        raise ValueError("the work's own error")

    with pytest.raises(ValueError, match="the work's own error"):
        processes.run_yielding(fails)
