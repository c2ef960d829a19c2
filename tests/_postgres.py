"""A real PostgreSQL server for tests: the Debian ``postgresql`` package's binaries, a temp data dir.

Why not pytest-postgresql: it runs ``initdb`` and ``pg_ctl`` as the current user, and
PostgreSQL refuses to run as root, which is who CI and this sandbox are. As root the
server runs as the package's ``postgres`` user (``runuser``); otherwise as whoever runs
the tests. It listens on 127.0.0.1 on a free port, trusts local connections, and is
stopped (``pg_ctl stop -m fast``) on exit.

Example:
    >>> with PostgreSQL(tmp_path) as pg:
    ...     uri = pg.database("mlflow")  # postgresql+psycopg://selfheal@127.0.0.1:<port>/mlflow
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import TracebackType

from serving.processes import free_port

USER = "selfheal"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgreSQL:
    """One PostgreSQL server in ``workdir``, stopped on exit."""

    def __init__(self, workdir: Path, binaries: Path | None = None) -> None:
        self.workdir = workdir
        self.bin = binaries or pg_bin()
        self.port = free_port()
        self.data = workdir / "data"
        self._as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, check=False, cwd="/")
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def __enter__(self) -> PostgreSQL:
        if self.bin is None:
            raise FileNotFoundError("no PostgreSQL binaries: apt-get install postgresql")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.workdir, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        log = str(self.workdir / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        return self

    def database(self, name: str) -> str:
        """Create a database no other test uses (``name-<random>``); its SQLAlchemy URI."""
        db = f"{name}_{uuid.uuid4().hex[:8]}"
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, db)
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        if self.bin is not None and (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
