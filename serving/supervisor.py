"""Several model servers on one port, each started again when it dies: ``python -m serving --replicas N``.

gunicorn replaces a dead worker, but nothing replaces a dead gunicorn master: its port
closes, and every request fails until someone restarts it (the healer, seconds later).
With ``--replicas N`` the process you start is this supervisor instead. It binds the
port and runs N masters that accept on that one socket (handed over as systemd socket
activation does: fd 3, ``LISTEN_FDS``/``LISTEN_PID``, which gunicorn reads), so a
connection waits in the queue for whichever worker is free and none is stranded on a
dead, stopped or booting one. The masters share one runtime folder (admin state,
metrics files: an ``/admin/rollback`` or a ``/metrics`` scrape answered by any replica
speaks for the whole server). Each master is a fork of the supervisor, which imported
the app and scikit-learn once: one started again skips the imports (about 1 s back,
against 3.5 s for an exec'd one). Killing one master leaves the others answering (and
its workers exit: each dies with its master, ``serving.server``; the supervisor drops
their live gauges, which their master's ``child_exit`` hook no longer can). A front
(``serving.front``: HAProxy) is one more child, exec'd, on the public socket. Stopping
the supervisor (SIGTERM, SIGINT) stops every child; a child whose supervisor is killed
outright exits too (``PR_SET_PDEATHSIG``), so nothing keeps serving an old model behind
a dead supervisor. SIGHUP is ignored.

A child that exits within ``QUICK_EXIT_SECONDS`` of its start (it cannot load its
model, its port is refused) is started again after a delay that doubles up to
``MAX_DELAY_SECONDS``, so a broken configuration does not spin the CPU.

Example (``serving.server`` builds this from ``--replicas``):
    >>> listener = socket.create_server(("127.0.0.1", 8765), backlog=2048)
    >>> replica = functools.partial(serving.server.main, ["--port", "8765", "--shared-runtime"])
    >>> Supervisor([Child(f"replica {i}", listener, target=replica) for i in (1, 2)]).run()
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from serving import processes
from serving.metrics import forget_dead_workers

logger = logging.getLogger(__name__)

#: A replica that lives shorter than this failed to start: its next start waits (doubling).
QUICK_EXIT_SECONDS = 10.0
MAX_DELAY_SECONDS = 30.0
#: How often the supervisor looks for exited replicas and due restarts.
_POLL_SECONDS = 0.1
#: How often it drops dead workers' gauges (a killed master's workers take a moment to exit).
_SWEEP_SECONDS = 1.0
_SD_LISTEN_FDS_START = 3  # the first inherited socket of systemd socket activation (sd_listen_fds)
#: Stops forwarded to every replica. SIGHUP is ignored: to gunicorn it means "reload", which
#: a replica does not need (it follows the registry).
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


class Forked:
    """A replica forked from the supervisor (no exec): the ``subprocess.Popen`` calls the supervisor makes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N: killed by signal N, as Popen says
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


@dataclass
class Child:
    """One process the supervisor keeps running, with the listening socket it gets as fd 3.

    Either a command to exec (``argv``) or a function run in a fork of the supervisor
    (``target``, its return value the exit code): a forked replica starts with every module
    the supervisor imported, so a restart skips the imports, most of a cold start.
    """

    name: str
    listener: socket.socket
    argv: list[str] | None = None
    target: Callable[[], int] | None = None
    proc: subprocess.Popen[bytes] | Forked | None = None
    started: float = 0.0
    quick_exits: int = 0
    due: float | None = 0.0  # when to start it (again); None: running or stopped


class Supervisor:
    """Runs each child (gunicorn masters, a front) with its listener and starts again any that exits."""

    def __init__(self, children: Sequence[Child]) -> None:
        if not children:
            raise ValueError("nothing to supervise")
        if any((c.argv is None) == (c.target is None) for c in children):
            raise ValueError("each child needs a command or a target, not both")
        self.children = list(children)
        self.stopping: int | None = None

    def run(self) -> int:
        """Start the children and keep them running until a signal stops them; returns the exit code."""
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        swept = time.monotonic()
        while True:
            if self.stopping is not None:
                if all(c.proc is None or c.proc.poll() is not None for c in self.children):
                    logger.info("every replica stopped")
                    return 0
            else:
                for child in self.children:  # exited and not yet scheduled: due is None while one runs
                    if child.due is None and child.proc is not None and child.proc.poll() is not None:
                        self._schedule_restart(child)
                self._start_due()
            if time.monotonic() - swept >= _SWEEP_SECONDS:
                forget_dead_workers()
                swept = time.monotonic()
            time.sleep(_POLL_SECONDS)

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.due is not None and child.due <= now:
                self._start(child)

    def _start(self, child: Child) -> None:
        parent, listener = os.getpid(), child.listener.fileno()

        def in_the_child() -> None:
            processes.die_with_parent(parent)
            if listener != _SD_LISTEN_FDS_START:
                os.dup2(listener, _SD_LISTEN_FDS_START)
            os.set_inheritable(_SD_LISTEN_FDS_START, True)  # the listener's own fd is close-on-exec
            os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))  # putenv: the exec inherits it

        if child.target is not None:

            def as_replica() -> None:
                in_the_child()
                processes.set_name(processes.REPLICA_MASTER)
                # A fork keeps every fd: only fd 3 is the replica's (the port closes with the supervisor's).
                for fd in {c.listener.fileno() for c in self.children} - {_SD_LISTEN_FDS_START}:
                    os.close(fd)

            child.proc = Forked(self._fork(child.target, as_replica))
        else:
            assert child.argv is not None
            # close_fds=False: closing runs after preexec_fn and would take fd 3 too; every other fd
            # Python opened is close-on-exec already.
            child.proc = subprocess.Popen(  # noqa: PLW1509 - the supervisor has one thread
                child.argv, preexec_fn=in_the_child, close_fds=False
            )
        child.started, child.due = time.monotonic(), None
        if self.stopping is not None:  # the stop came while it was being started
            child.proc.send_signal(self.stopping)
            return
        logger.info("%s started (pid %d)", child.name, child.proc.pid)

    @staticmethod
    def _fork(target: Callable[[], int], prepare: Callable[[], None]) -> int:
        pid = os.fork()
        if pid:
            return pid
        try:  # the child: none of the supervisor's handlers (they would signal its siblings)
            for sig in (*_FORWARDED, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            prepare()
        except BaseException:
            logger.exception("replica set-up failed")
            os._exit(1)
        # Leaves as an exec'd server would: SystemExit unwinds to the interpreter's exit (atexit
        # handlers run), in this process and in the workers gunicorn forks from it.
        raise SystemExit(target())

    def _schedule_restart(self, child: Child) -> None:
        assert child.proc is not None
        lived = time.monotonic() - child.started
        child.quick_exits = child.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
        delay = min(MAX_DELAY_SECONDS, 0.5 * 2 ** (child.quick_exits - 1)) if child.quick_exits else 0.0
        child.due = time.monotonic() + delay
        code = child.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        logger.warning(
            "%s (pid %d) exited (%s) after %.1f s; starting it again%s",
            child.name,
            child.proc.pid,
            how,
            lived,
            f" in {delay:g} s" if delay else "",
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = signum
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                child.proc.send_signal(signum)
