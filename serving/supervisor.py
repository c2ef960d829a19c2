"""Several model servers on one port, each started again when it dies: ``python -m serving --replicas N``.

gunicorn replaces a dead worker, but nothing replaces a dead gunicorn master: its port
closes, and every request fails until someone restarts it (the healer, seconds later).
With ``--replicas N`` the process you start is this supervisor instead. It runs N
masters that share the port (``SO_REUSEPORT``: the kernel spreads new connections over
them), each with a runtime folder of its own (``<runtime>/replica-<i>``: admin state,
metrics files), and starts a replica again as soon as it exits. Killing one master leaves
the others answering. Stopping the supervisor (SIGTERM, SIGINT) stops every replica; a
replica whose supervisor is killed outright exits too (``PR_SET_PDEATHSIG``), so nothing
keeps serving an old model behind a dead supervisor.

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
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:
    """Runs in the replica between fork and exec: SIGTERM when the supervisor dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Replica:
    index: int
    runtime: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_exits: int = 0


class Supervisor:
    """Runs ``replicas`` copies of ``argv`` (a server started with ``--reuse-port``) and restarts any that exits."""

    def __init__(self, argv: Sequence[str], replicas: int, runtime: Path) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.argv = list(argv)
        self.replicas = [_Replica(i, runtime / f"replica-{i}") for i in range(1, replicas + 1)]
        self.stopping: int | None = None

    def run(self) -> int:
        """Start the replicas and keep them running until a signal stops them; returns the exit code."""
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        for replica in self.replicas:
            self._start(replica)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # every replica has exited: only after a stop
                logger.info("every replica stopped")
                return 0
            exited = next((r for r in self.replicas if r.proc is not None and r.proc.pid == pid), None)
            if exited is None or exited.proc is None:
                continue
            exited.proc.returncode = os.waitstatus_to_exitcode(status)
            if self.stopping is None:
                self._restart(exited)

    def _start(self, replica: _Replica) -> None:
        env = {**os.environ, "SELFHEAL_RUNTIME_DIR": str(replica.runtime)}
        replica.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 - one thread
        replica.started = time.monotonic()
        logger.info("replica %d started (pid %d)", replica.index, replica.proc.pid)

    def _restart(self, replica: _Replica) -> None:
        assert replica.proc is not None
        lived = time.monotonic() - replica.started
        replica.quick_exits = replica.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
        delay = min(MAX_DELAY_SECONDS, 0.5 * 2 ** (replica.quick_exits - 1)) if replica.quick_exits else 0.0
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
        time.sleep(delay)
        if self.stopping is None:
            self._start(replica)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = signum
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                replica.proc.send_signal(signum)
