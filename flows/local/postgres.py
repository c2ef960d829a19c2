"""A PostgreSQL server of its own: the Debian ``postgresql`` package's binaries, a data dir in a folder.

The production profile (``selfheal demo --profile production``) keeps MLflow's and
Prefect's databases in it, and the tests start one per session.

Why not pytest-postgresql: it runs ``initdb`` and ``pg_ctl`` as the current user, and
PostgreSQL refuses to run as root, which is who CI and this sandbox are. As root the
server runs as the package's ``postgres`` user (``runuser``); otherwise as whoever runs
the tests. A folder that user cannot reach (under pytest's private temp dir, or root's
home) is swapped for a temp dir of its own, removed on exit; or, for a server whose data
is kept (``keep=True``: ``selfheal up``), for ``/var/lib/postgresql/selfheal-<hash of the
folder>``, which stays. It listens on 127.0.0.1 on a free port, trusts local
connections, and is stopped (``pg_ctl stop -m fast``) on exit. A data folder that
already holds a cluster is started as it is (its databases kept).

Example:
    >>> with PostgreSQL(tmp_path) as pg:
    ...     uri = pg.database("mlflow")  # postgresql+psycopg://selfheal@127.0.0.1:<port>/mlflow_<random>
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

from checkpoints.exceptions import SelfhealError
from serving.processes import free_port

USER = "selfheal"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def kept_folder(workdir: Path) -> Path:
    """Where a kept server for ``workdir`` lives when its ``postgres`` user cannot reach ``workdir``.

    Under the package's ``/var/lib/postgresql`` (the ``postgres`` user's home, writable by
    root and postgres only), not in a world-writable folder where another user could
    plant the name first.
    """
    digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/postgresql") / f"selfheal-{digest}"


def _reachable_by_others(path: Path) -> bool:
    """Whether every existing folder on the way to ``path`` lets other users through."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents] if p.exists())


class PostgreSQL:
    """One PostgreSQL server in ``workdir``, stopped on exit."""

    def __init__(self, workdir: Path, binaries: Path | None = None, *, keep: bool = False) -> None:
        self.bin = binaries or pg_bin()
        self.port = free_port()
        self._as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        elsewhere = bool(self._as) and not _reachable_by_others(workdir.resolve())
        self.temporary = elsewhere and not keep
        if self.temporary:
            self.workdir = Path(tempfile.mkdtemp(prefix="selfheal-postgres-"))
        else:
            self.workdir = kept_folder(workdir) if elsewhere else workdir
        self.data = self.workdir / "data"

    def _run(self, *command: str) -> str:
        """Run ``command`` (as ``postgres`` when root); its output."""
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, check=False, cwd="/")
        if done.returncode:
            raise SelfhealError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def __enter__(self) -> PostgreSQL:
        if self.bin is None:
            raise SelfhealError("no PostgreSQL binaries: apt-get install postgresql (make deps installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.workdir, "postgres")
        if not (self.data / "PG_VERSION").exists():  # else a server stopped earlier: its databases kept
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8")
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> None:
        """Start the server on its port (again, after ``stop``) and wait until it accepts connections."""
        assert self.bin is not None
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        log = str(self.workdir / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server (``-m fast``: open connections are cut); its data stays for ``start``."""
        if self.bin is not None and (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def database(self, name: str, driver: str = "psycopg", *, unique: bool = True) -> str:
        """A database's SQLAlchemy URI with ``driver``.

        ``unique``: create one nobody else uses (``name_<random>``); else ``name`` itself,
        created if it does not exist yet (a server started again keeps its data).
        """
        assert self.bin is not None
        db = f"{name}_{uuid.uuid4().hex[:8]}" if unique else name
        if unique or not self._exists(db):
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, db)
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{db}"

    def _exists(self, db: str) -> bool:
        assert self.bin is not None
        query = f"SELECT 1 FROM pg_database WHERE datname = '{db}'"  # noqa: S608 - a name of ours, not input
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres"]
        return self._run(*psql, "-tAc", query).strip() == "1"

    def close(self) -> None:
        self.stop()
        if self.temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
