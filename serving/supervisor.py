"""Several model servers on one port, each started again when it dies: ``python -m serving --replicas N``.

gunicorn replaces a dead worker, but nothing replaces a dead gunicorn master: its port
closes, and every request fails until someone restarts it (the healer, seconds later).
With ``--replicas N`` the process you start is this supervisor instead. It runs N
masters that share the port (``SO_REUSEPORT``: the kernel spreads new connections over
them), each with a runtime folder of its own (``<runtime>/replica-<i>``: admin state,
metrics files), and starts a replica again as soon as it exits. Killing one master leaves
the others answering (and its workers exit: each dies with its master,
``serving.server``). Stopping the supervisor (SIGTERM, SIGINT) stops every replica; a
replica whose supervisor is killed outright exits too (``PR_SET_PDEATHSIG``), so nothing
keeps serving an old model behind a dead supervisor. SIGHUP is ignored.

A replica that exits within ``QUICK_EXIT_SECONDS`` of its start (it cannot load its
model, its port is refused) is started again after a delay that doubles up to
``MAX_DELAY_SECONDS``, so a broken configuration does not spin the CPU.

Example:
    >>> Supervisor([sys.executable, "-m", "serving", "--port", "8765", "--reuse-port"], 2, Path("run")).run()
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

#: A replica that lives shorter than this failed to start: its next start waits (doubling).
QUICK_EXIT_SECONDS = 10.0
MAX_DELAY_SECONDS = 30.0
#: How often the supervisor looks for exited replicas and due restarts.
_POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
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
    runtime: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_exits: int = 0
    due: float | None = None  # when to start it (again); None: running or stopped


class Supervisor:
    """Runs ``replicas`` copies of ``argv`` (a server started with ``--reuse-port``) and restarts any that exits."""

    def __init__(self, argv: Sequence[str], replicas: int, runtime: Path) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.argv = list(argv)
        self.replicas = [_Replica(i, runtime / f"replica-{i}", due=0.0) for i in range(1, replicas + 1)]
        self.stopping: int | None = None

    def run(self) -> int:
        """Start the replicas and keep them running until a signal stops them; returns the exit code."""
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
            time.sleep(_POLL_SECONDS)

    def _start_due(self) -> None:
        now = time.monotonic()
        for replica in self.replicas:
            if replica.due is not None and replica.due <= now:
                self._start(replica)

    def _start(self, replica: _Replica) -> None:
        env = {**os.environ, "SELFHEAL_RUNTIME_DIR": str(replica.runtime)}
        parent = os.getpid()
        replica.proc = subprocess.Popen(  # noqa: PLW1509 - the supervisor has one thread
            self.argv, env=env, preexec_fn=lambda: die_with_parent(parent)
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
