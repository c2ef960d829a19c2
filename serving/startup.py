"""The start-up profile: what a server did between exec and ``/ready``, and how long each part took.

``python -m serving --profile-startup`` (``selfheal serve --profile-startup``) switches it on
(``SELFHEAL_PROFILE_STARTUP=1``). The master records its imports; it forks the workers with
that record (``preload_app``), and each worker adds its own phases (registry reads, artifact
fetch, model load, warm-up) and logs the whole profile once its models are loaded.
Wall and CPU seconds are both kept: on a busy machine wall time says little.

Example:
    >>> with phase("registry read"):
    ...     registry.by_alias("champion")
    >>> log_profile("worker 1234 ready")
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

logger = logging.getLogger(__name__)

#: The environment switch ``--profile-startup`` sets.
PROFILE_SWITCH = "SELFHEAL_PROFILE_STARTUP"

#: phase -> [wall seconds, CPU seconds, times]; ordered by first use. Copied into each forked worker.
_PHASES: dict[str, list[float]] = {}
_logged = False


def enabled() -> bool:
    """Whether this server profiles its start-up."""
    return os.environ.get(PROFILE_SWITCH, "") not in ("", "0", "false")


#: Set by the master for its workers: when the server's process was started (epoch seconds).
EXEC_TIME = "SELFHEAL_EXEC_TIME"


def process_start() -> float:
    """When this process was started (epoch seconds), to the kernel's clock tick (10 ms).

    Not ``psutil.Process().create_time()``: it adds the start to /proc/stat's boot time, which
    is whole seconds, so it can be up to 1 s early (0.95 s on the machine this was written on,
    which made the profile's first phase 1.14 s where 0.2 s were spent). The start in
    /proc/self/stat counts from boot, as ``CLOCK_BOOTTIME`` does: their difference is the age.
    """
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: psutil's (coarser) answer
        return float(psutil.Process().create_time())
    return time.time() - age


def exec_time() -> float:
    """When the server's process was started (epoch seconds): the master's, also seen from a worker.

    ``selfheal serve`` execs ``python -m serving`` in place, so this is when the command was started.
    """
    known = os.environ.get(EXEC_TIME)
    return float(known) if known else process_start()


def mark_exec() -> None:
    """In the master: record the process start for the workers, and the time spent before ``main()``."""
    started = process_start()
    os.environ[EXEC_TIME] = str(started)
    record("interpreter start, selfheal CLI, server import", time.time() - started, time.process_time())


_forked_at: float | None = None


def mark_fork() -> None:
    """In the master, just before gunicorn forks: the gap to a worker's start is gunicorn's boot."""
    global _forked_at
    _forked_at = time.perf_counter()


def mark_worker() -> None:
    """In a worker, when its app starts: adds gunicorn's boot (master ready -> worker lifespan)."""
    if _forked_at is not None:
        record("gunicorn boot and fork (wall only)", time.perf_counter() - _forked_at, 0.0)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time the block takes to the phase ``name`` (nothing is recorded with profiling off)."""
    if not enabled():
        yield
        return
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        spent = _PHASES.setdefault(name, [0.0, 0.0, 0])
        spent[0] += time.perf_counter() - wall
        spent[1] += time.process_time() - cpu
        spent[2] += 1


def record(name: str, wall: float, cpu: float) -> None:
    """Add a phase measured elsewhere (the interpreter's own start, before this module was imported)."""
    if enabled():
        _PHASES[name] = [wall, cpu, 1]


def report(title: str) -> str:
    """The profile so far as a table (phases in the order they started)."""
    since_exec = time.time() - exec_time()
    sklearn = "scikit-learn imported" if "sklearn" in sys.modules else "scikit-learn not imported"
    lines = [
        f"start-up profile: {title}, {since_exec:.2f} s since exec ({sklearn})",
        f"  {'phase':<40} {'wall s':>7} {'cpu s':>7}",
    ]
    for name, (wall, cpu, times) in _PHASES.items():
        label = name if times == 1 else f"{name} (x{times:g})"
        lines.append(f"  {label:<40} {wall:>7.3f} {cpu:>7.3f}")
    return "\n".join(lines)


def log_profile(title: str) -> None:
    """Log the profile once per process (the first worker models loaded)."""
    global _logged
    if enabled() and not _logged:
        _logged = True
        logger.info("%s", report(title))
