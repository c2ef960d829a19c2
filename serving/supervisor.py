"""Several model servers on one port, each started again when it dies: ``python -m serving --replicas N``.

gunicorn replaces a dead worker, but nothing replaces a dead gunicorn master: its port
closes, and every request fails until someone restarts it (the healer, seconds later).
With ``--replicas N`` the process you start is this supervisor instead. It binds the
port and runs N masters that accept on that one socket (handed over as systemd socket
activation does: fd 3, ``LISTEN_FDS``/``LISTEN_PID``, which gunicorn reads), so a
connection waits in the queue for whichever worker is free and none is stranded on a
dead, stopped or booting one; they share one runtime folder (admin state, metrics files: an ``/admin/rollback`` or a
``/metrics`` scrape answered by any replica speaks for the whole server), and starts a
replica again as soon as it exits. Killing one master leaves the others answering (and
its workers exit: each dies with its master, ``serving.server``; the supervisor drops
their live gauges, which their master's ``child_exit`` hook no longer can). Stopping
the supervisor (SIGTERM, SIGINT) stops every replica; a replica whose supervisor is
killed outright exits too (``PR_SET_PDEATHSIG``), so nothing keeps serving an old model
behind a dead supervisor. SIGHUP is ignored.

A replica that exits within ``QUICK_EXIT_SECONDS`` of its start (it cannot load its
model, its port is refused) is started again after a delay that doubles up to
``MAX_DELAY_SECONDS``, so a broken configuration does not spin the CPU.

Example:
    >>> listener = socket.create_server(("127.0.0.1", 8765), backlog=2048)
    >>> Supervisor([sys.executable, "-m", "serving", "--port", "8765", "--shared-runtime"], 2, listener).run()
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from serving.metrics import forget_dead_workers

logger = logging.getLogger(__name__)

#: A replica that lives shorter than this failed to start: its next start waits (doubling).
QUICK_EXIT_SECONDS = 10.0
MAX_DELAY_SECONDS = 30.0
#: How often the supervisor looks for exited replicas and due restarts.
_POLL_SECONDS = 0.1
#: How often it drops dead workers' gauges (a killed master's workers take a moment to exit).
_SWEEP_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SD_LISTEN_FDS_START = 3  # the first inherited socket of systemd socket activation (sd_listen_fds)
#: Stops forwarded to every replica. SIGHUP is ignored: to gunicorn it means "reload", which
#: a replica does not need (it follows the registry).
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``); exit now if it already has."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        os._exit(1)


@dataclass
class _Replica:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_exits: int = 0
    due: float | None = None  # when to start it (again); None: running or stopped


class Supervisor:
    """Runs ``replicas`` copies of ``argv`` (a gunicorn server) on ``listener`` and restarts any that exits."""

    def __init__(self, argv: Sequence[str], replicas: int, listener: socket.socket) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.argv = list(argv)
        self.listener = listener
        self.replicas = [_Replica(i, due=0.0) for i in range(1, replicas + 1)]
        self.stopping: int | None = None

    def run(self) -> int:
        """Start the replicas and keep them running until a signal stops them; returns the exit code."""
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        swept = time.monotonic()
        while True:
            if self.stopping is not None:
                if all(r.proc is None or r.proc.poll() is not None for r in self.replicas):
                    logger.info("every replica stopped")
                    return 0
            else:
                for replica in self.replicas:  # exited and not yet scheduled: due is None while one runs
                    if replica.due is None and replica.proc is not None and replica.proc.poll() is not None:
                        self._schedule_restart(replica)
                self._start_due()
            if time.monotonic() - swept >= _SWEEP_SECONDS:
                forget_dead_workers()
                swept = time.monotonic()
            time.sleep(_POLL_SECONDS)

    def _start_due(self) -> None:
        now = time.monotonic()
        for replica in self.replicas:
            if replica.due is not None and replica.due <= now:
                self._start(replica)

    def _start(self, replica: _Replica) -> None:
        parent, listener = os.getpid(), self.listener.fileno()

        def in_the_child() -> None:
            die_with_parent(parent)
            if listener != _SD_LISTEN_FDS_START:
                os.dup2(listener, _SD_LISTEN_FDS_START)
            os.set_inheritable(_SD_LISTEN_FDS_START, True)  # the listener's own fd is close-on-exec
            os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))  # putenv: the exec inherits it

        # close_fds=False: closing runs after preexec_fn and would take fd 3 too; every other fd
        # Python opened is close-on-exec already.
        replica.proc = subprocess.Popen(  # noqa: PLW1509 - the supervisor has one thread
            self.argv, preexec_fn=in_the_child, close_fds=False
        )
        replica.started, replica.due = time.monotonic(), None
        if self.stopping is not None:  # the stop came while it was being started
            replica.proc.send_signal(self.stopping)
            return
        logger.info("replica %d started (pid %d)", replica.index, replica.proc.pid)

    def _schedule_restart(self, replica: _Replica) -> None:
        assert replica.proc is not None
        lived = time.monotonic() - replica.started
        replica.quick_exits = replica.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
        delay = min(MAX_DELAY_SECONDS, 0.5 * 2 ** (replica.quick_exits - 1)) if replica.quick_exits else 0.0
        replica.due = time.monotonic() + delay
        code = replica.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        logger.warning(
            "replica %d (pid %d) exited (%s) after %.1f s; starting it again%s",
            replica.index,
            replica.proc.pid,
            how,
            lived,
            f" in {delay:g} s" if delay else "",
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = signum
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                replica.proc.send_signal(signum)
