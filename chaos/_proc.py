"""Processes as Linux shows them in /proc: parents, children, command lines, signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ")".
    return stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent(pid: int) -> int | None:
    """The parent pid of ``pid`` (None if it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``, sorted."""
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            out.append(child)
            stack.append(child)
    return out


def cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid`` (empty if it is gone)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def matching(words: list[str]) -> list[int]:
    """Live processes (not this one) whose argument vector holds every one of ``words``."""
    me = os.getpid()
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            argv = cmdline(int(entry.name))
            if argv and all(word in argv for word in words) and alive(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def signal_number(name: str) -> signal.Signals:
    """``"SIGKILL"`` or ``"KILL"`` -> ``signal.SIGKILL``."""
    key = name.upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    try:
        return signal.Signals[key]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def send(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid``; False if it was already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def read_pid_file(path: str | os.PathLike[str]) -> int | None:
    """The pid in ``path`` if the file exists and that process is alive."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if alive(pid) else None
