"""Hold an exclusive lock on a SQLite database for a while: the tracking store stops answering.

Run as ``python -m chaos.registry._lock <database file> <seconds>``. It prints
``locked`` once the lock is held, then sleeps; every other connection waits for its
busy timeout and then fails with "database is locked". The lock ends when the
seconds run out or the process is killed, so a forgotten fault undoes itself.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m chaos.registry._lock <database file> <seconds>\n")
        return 2
    path, seconds = argv[0], float(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    time.sleep(seconds)
    connection.rollback()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
