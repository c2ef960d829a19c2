"""Several copies of a test module started at once, as separate processes, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_together(
    module: str, argvs: Sequence[Sequence[str]], env: Mapping[str, str] | None = None, timeout: float = 900.0
) -> list[tuple[int, str, str]]:
    """``python -m module *argv`` for each of ``argvs``, all started before any is waited for.

    Returns each process's (exit code, stdout, stderr), in the order of ``argvs``. The
    processes see ``env`` over this one's environment, with the repository on PYTHONPATH.
    """
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            cwd=REPO,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]
