"""Local processes and the servers they run: find them, stop them, wait for them, give them a port.

The one place the project looks at processes (through psutil, not by reading /proc)
and the one ``wait_until`` every "poll until ready, or give up" loop is built on.
Pids go in and out as plain ints; a process that is a zombie counts as gone (it has
exited and only waits for its parent, or init, to reap it).

Example:
    >>> port = free_port()
    >>> proc = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port)])
    >>> wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "the model server")
    >>> left = stop(process_tree(proc.pid), grace=15)  # [] when everything exited
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import psutil

T = TypeVar("T")

#: How long ``find`` waits for a process that is between exec and its new argument vector.
_EXEC_GRACE_SECONDS = 0.5
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15  # <linux/prctl.h>


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``condition`` until it returns something truthy, and return that value.

    The condition is called at least once, and once more at the deadline. Exceptions it
    raises propagate: a condition that may fail says so by returning a falsy value.

    Args:
        condition: one look; its truthy result ends the wait.
        timeout: seconds to keep looking.
        what: the awaited thing in words, for the error.
        interval: seconds from the start of one look to the start of the next (a slow look
            is followed by the next one at once).

    Raises:
        TimeoutError: nothing truthy within ``timeout``; the message names ``what`` and the last value seen.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    deadline = time.monotonic() + timeout
    while True:
        looked_at = time.monotonic()
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last seen: {value!r})")
        time.sleep(max(0.0, min(looked_at + interval, deadline) - now))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 (False when nothing answers)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- looking ----------------------------------------------------------------------------------
def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


def stopped(pid: int) -> bool:
    """Whether ``pid`` exists and is stopped (SIGSTOP, SIGTSTP): alive, but runs nothing."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


#: The nice value of work that must not slow the model server down (pipeline runs, the healer, a shadow).
BACKGROUND_NICENESS = 19


def yield_cpu(pid: int | None = None) -> bool:
    """Let ``pid`` (None: this process) take only CPU time the model server does not want.

    Its nice value goes to 19 and, when it leads its own session, its session's
    autogroup nice value too. On Linux with ``sched_autogroup`` (on in most distribution
    kernels, and here) CPU is shared between sessions before nice values count, so a
    process in a session of its own gets as much CPU as the whole model server whatever
    its own nice value: on 2 cores a pipeline run importing MLflow and scikit-learn
    took the sandbox server's p99 from ~20 ms to ~130 ms for seconds. Returns whether
    every change took (raising priority back needs privileges, so this is for whole
    processes that stay background work).
    """
    pid = os.getpid() if pid is None else pid
    try:
        psutil.Process(pid).nice(BACKGROUND_NICENESS)
        leader = os.getsid(pid) == pid
    except (psutil.Error, OSError):
        return False
    if not leader or autogroup_nice(pid) is None:
        return True  # a shared session is not this process's to lower; no autogroup: nice is enough
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{BACKGROUND_NICENESS}\n")
    except OSError:
        return False
    return True


def run_yielding(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread of its own at nice 19; its result, or its exception raised here.

    Linux keeps a nice value per thread, so this lowers one piece of work in a process
    that must itself keep its priority (the chaos runner, whose probes time the model
    server, fitting the model a fault registers); the thread ends with the work, so
    nothing has to raise a priority back. Threads the work starts inherit nice 19 (a pool
    created there for the first time keeps it); threads of pools that already exist do
    not (run the work on one thread, e.g. ``threadpool_limits(1)``, to keep all of it
    low). Where nice is not per thread (not Linux) the work runs at the caller's priority.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
        except OSError:
            pass  # the work still runs, at the caller's priority
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            box["error"] = exc

    thread = threading.Thread(target=run, name="yielding-work")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["result"])


def autogroup_nice(pid: int) -> int | None:
    """The nice value of ``pid``'s session autogroup; None when it is in none.

    None when the kernel has no ``sched_autogroup``, when ``pid`` is gone, and when
    it runs in a cpu cgroup other than the root one (a container, a CI job): there
    the file exists but is empty, and the cgroup, not the session, shares the CPU.
    """
    try:
        fields = Path(f"/proc/{pid}/autogroup").read_text().split()  # "/autogroup-123 nice 0"
    except OSError:
        return None
    return int(fields[-1]) if len(fields) == 3 and fields[1] == "nice" else None


def started_at(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds; None if it is gone): with the pid, names one process even after reuse."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def parent(pid: int) -> int | None:
    """The parent pid of ``pid`` (None if it is gone)."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``, sorted."""
    try:
        return sorted(c.pid for c in psutil.Process(pid).children() if _running(c))
    except psutil.Error:
        return []


def listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on (empty if it is gone)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


#: The names (``/proc/<pid>/comm``) of ``serving.supervisor`` and of the gunicorn masters and
#: workers it forks: they all share its command line (``--replicas N``), only the name tells them apart.
SUPERVISOR = "serving-super"
REPLICA_MASTER = "serving-master"
REPLICA_WORKER = "serving-worker"


def _prctl(option: int, arg: int | bytes) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def set_name(name: str) -> None:
    """Name this process (``PR_SET_NAME``: ``ps -o comm``, psutil's ``name()``); at most 15 bytes."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``); exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        os._exit(1)


def name(pid: int) -> str:
    """The name of ``pid`` (empty if it is gone)."""
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return ""


def replica_masters(pid: int) -> list[int]:
    """The gunicorn masters ``serving.supervisor`` at ``pid`` runs (not its front), sorted; [] for any other process."""
    return [c for c in children(pid) if name(c) == REPLICA_MASTER] if name(pid) == SUPERVISOR else []


def argv(pid: int) -> list[str]:
    """The argument vector of ``pid`` (empty if it is gone)."""
    try:
        return _argv(psutil.Process(pid))
    except psutil.Error:
        return []


def _argv(proc: psutil.Process) -> list[str]:
    try:
        found = proc.cmdline()
        # Right after vfork/exec a process reads an empty command line until the kernel has
        # set up its new one; a kernel thread has none for good (and no memory of its own).
        if not found and proc.memory_info().vms > 0:
            found = wait_until(proc.cmdline, _EXEC_GRACE_SECONDS, f"the command line of {proc.pid}", 0.005)
        return found
    except (psutil.Error, TimeoutError):
        return []


def find(words: Sequence[str]) -> list[int]:
    """Live processes (not this one) whose argument vector holds every one of ``words``, sorted."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid != me and _running(proc):
            line = _argv(proc)
            if line and all(word in line for word in words):
                found.append(proc.pid)
    return sorted(found)


def read_pid_file(path: str | os.PathLike[str]) -> int | None:
    """The pid written in ``path`` if the file exists and that process is alive."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and alive(int(text)) else None


def process_group(pgid: int) -> list[int]:
    """The live members of process group ``pgid``, sorted."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _running(proc):
                found.append(proc.pid)
        except OSError:
            continue
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Live children, grandchildren, ... of ``pid``, sorted."""
    try:
        return sorted(c.pid for c in psutil.Process(pid).children(recursive=True) if _running(c))
    except psutil.Error:
        return []


def process_tree(pid: int) -> list[int]:
    """``pid``, the members of its process group and all their descendants, alive now, sorted.

    The group catches what a leader started and lost track of (an orphan re-parented to
    init); the descendants catch what left the group (a flow run in its own session).
    """
    roots = set(process_group(pid))
    if alive(pid):
        roots.add(pid)
    return sorted(roots.union(*(descendants(root) for root in roots)))


# -- stopping ---------------------------------------------------------------------------------
def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in dict.fromkeys(pids):
        try:
            found.append(psutil.Process(pid))  # from here on, a reused pid is told apart
        except psutil.Error:
            continue
    return found


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    left = procs

    def settled() -> bool:
        nonlocal left
        # Not psutil.wait_procs: it waits for a zombie whose parent is not us until the timeout,
        # and reaps our own children, so their Popen objects would never learn the exit code.
        left = [p for p in left if _running(p)]
        return not left

    try:
        wait_until(settled, timeout, "processes to exit", interval=0.05)
    except TimeoutError:
        pass
    return left


def _signal(procs: list[psutil.Process], sig: signal.Signals, timeout: float) -> list[psutil.Process]:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:  # gone already (or its pid reused: not ours to signal)
            continue
    return _wait(procs, timeout)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``, sorted."""
    return sorted(p.pid for p in _wait(_processes(pids), timeout))


def kill(pids: Iterable[int], sig: signal.Signals = signal.SIGKILL, timeout: float = 10.0) -> list[int]:
    """Send ``sig`` to each of ``pids`` (in order), wait up to ``timeout`` s; return those still alive, sorted."""
    return sorted(p.pid for p in _signal(_processes(pids), sig, timeout))


def stop(pids: Iterable[int], grace: float = 10.0, kill_timeout: float = 5.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL what is left after ``grace`` seconds; return those that survived both, sorted.

    Example:
        >>> if stop(process_tree(leader), grace=15):
        ...     raise SelfhealError("the stack did not stop")
    """
    left = _signal(_processes(pids), signal.SIGTERM, grace)
    return sorted(p.pid for p in _signal(left, signal.SIGKILL, kill_timeout)) if left else []
