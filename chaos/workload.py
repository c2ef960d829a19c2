"""The workload: clients calling the model server, and the log that availability is measured on.

A few threads replay the records of a batch file (features only) to ``POST /predict``
at a steady rate, post each record's true label to ``POST /feedback`` (the labels
arrive at once here), and append one JSON line per prediction request to a log::

    {"t": 1718000003.41, "ok": true, "status": "200", "served_by": "primary", "ids": ["9f2c..."], "ms": 4.1}

``t`` is when the answer (or the error) came back. Availability is the share of
requests answered 200 with predictions (fallback answers count; ``served_by``
tells them apart). Like a real client, a request whose connection broke (a worker
was killed under it) is retried once on a new connection; a refused or timed-out
request is not.

Records are sent in a shuffled order (a batch file is in time order), and the
batch file is re-read when it changes, so swapping it (``chaos.data.actions.inject_drift``)
changes what the clients send.

Run it as a process::

    python -m chaos.workload --url http://127.0.0.1:8765 --source stream.parquet --log traffic.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from checkpoints.exceptions import ServingUnavailable
from serving import processes
from serving.client import ServingClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One prediction request as the client saw it (a demo's traffic log reads back as ~10k of them)."""

    t: float
    ok: bool
    status: str
    served_by: str | None = None
    ids: tuple[str, ...] = ()
    ms: float = 0.0


def read_outcomes(path: str | os.PathLike[str], start: float | None = None, end: float | None = None) -> list[Outcome]:
    """Requests in the log whose answer came back in ``[start, end]`` (a torn last line is skipped)."""
    file = Path(path)
    if not file.exists():
        return []
    out = []
    with file.open() as fh:
        for line in fh:
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            t = float(raw["t"])
            if (start is not None and t < start) or (end is not None and t > end):
                continue
            out.append(
                Outcome(
                    t, bool(raw["ok"]), str(raw["status"]), raw.get("served_by"), tuple(raw.get("ids") or ()), raw["ms"]
                )
            )
    return out


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a parquet or CSV batch as plain Python values (nulls as None)."""

    text = str(path)
    table = pacsv.read_csv(text) if text.endswith(".csv") else pq.read_table(text)
    return [dict(row) for row in table.to_pylist()]


@dataclass
class RecordSource:
    """The records the clients send, re-read whenever the file changes."""

    path: Path
    features: list[str] | None
    target: str | None
    _stamp: tuple[float, int] = (0.0, 0)
    _rows: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            records = read_records(self.path)
        except Exception as exc:  # noqa: BLE001 - a half-written file: keep the old records
            logger.warning("cannot read %s (%s); keeping the previous records", self.path, exc)
            return
        rows = []
        for record in records:
            label = record.get(self.target) if self.target else None
            features = {k: v for k, v in record.items() if self.features is None or k in self.features}
            if self.features is None and self.target:
                features.pop(self.target, None)
            rows.append((features, label))
        # Batches are in time order; shuffled, any stretch of requests is a fair sample of the batch
        # (else a short window would see only the night's hours and look like drift).
        random.Random(len(rows)).shuffle(rows)
        self._rows, self._stamp, self._next = rows, stamp, 0
        logger.info("workload: %d records from %s", len(rows), self.path)

    def take(self) -> tuple[dict[str, Any], Any] | None:
        with self._lock:
            self._reload()
            if not self._rows:
                return None
            row = self._rows[self._next % len(self._rows)]
            self._next += 1
            return row


class TrafficLog:
    """Append-only JSON lines, one per request, safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, outcome: Outcome) -> None:
        line = json.dumps(
            {
                "t": round(outcome.t, 4),
                "ok": outcome.ok,
                "status": outcome.status,
                "served_by": outcome.served_by,
                "ids": list(outcome.ids),
                "ms": round(outcome.ms, 2),
            }
        )
        with self._lock:
            self._fh.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _post(client: httpx.Client, url: str, body: Any) -> Outcome:
    started = time.perf_counter()
    for attempt in (1, 2):
        try:
            response = client.post(f"{url}/predict", json=body)
            break
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if attempt == 2:
                return Outcome(time.time(), False, type(exc).__name__, ms=(time.perf_counter() - started) * 1000)
        except httpx.HTTPError as exc:
            return Outcome(time.time(), False, type(exc).__name__, ms=(time.perf_counter() - started) * 1000)
    ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Outcome(time.time(), False, str(response.status_code), ms=ms)
    try:
        answer = response.json()
    except ValueError:
        return Outcome(time.time(), False, "200-unreadable", ms=ms)
    ok = bool(answer.get("predictions"))
    return Outcome(time.time(), ok, "200", answer.get("served_by"), tuple(answer.get("ids") or ()), ms)


@dataclass
class Workload:
    """Client threads sending one record per request at ``rate`` requests per second in all."""

    url: str
    """The server's base URL: records go to ``<url>/predict``, labels to ``<url>/feedback``."""
    source: RecordSource
    log: TrafficLog
    """Where every request's outcome is appended (availability is computed from it)."""
    rate: float = 20.0
    threads: int = 2
    feedback: bool = True
    """Send each answered record's label (when the batch has one) to ``/feedback``, as a labelling job would."""
    request_timeout: float = 2.0
    """Seconds a request may take; a slower answer counts as failed (``ReadTimeout``)."""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, duration: float | None = None) -> None:
        workers = [threading.Thread(target=self._loop, name=f"client-{i}", daemon=True) for i in range(self.threads)]
        for worker in workers:
            worker.start()
        self.stop.wait(duration)
        self.stop.set()
        for worker in workers:
            worker.join(self.request_timeout * 3)

    def _ticks(self) -> Iterator[None]:
        period = self.threads / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            yield None
            # A client that fell behind (slow answers) skips the slots it missed instead of
            # firing them all at once: otherwise the backlog lands on the first requests an
            # outage refuses at once, and one dead second costs several seconds of traffic.
            next_at = max(next_at + period, time.monotonic() - period)
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _loop(self) -> None:
        with httpx.Client(timeout=self.request_timeout) as client:
            for _ in self._ticks():
                row = self.source.take()
                if row is None:
                    self.stop.wait(0.5)
                    continue
                features, label = row
                outcome = _post(client, self.url, features)
                self.log.write(outcome)
                if outcome.ok and self.feedback and label is not None and outcome.ids:
                    try:
                        client.post(f"{self.url}/feedback", json={"request_id": outcome.ids[0], "label": float(label)})
                    except httpx.HTTPError:
                        pass  # a lost label is the monitor's problem, not availability's


def feature_names(url: str, timeout: float = 10.0) -> list[str] | None:
    """The model's input columns from the server's OpenAPI document (None: it does not say yet)."""
    try:
        with ServingClient(url) as server:
            return server.feature_names(timeout)
    except ServingUnavailable:
        return None


def wait_feature_names(url: str, wait: float) -> list[str] | None:
    """``feature_names``, asked every second for up to ``wait`` seconds (a replica may still be loading its model)."""
    try:
        return processes.wait_until(lambda: feature_names(url), wait, f"the feature names of {url}", interval=1.0)
    except TimeoutError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.workload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="model server base URL")
    parser.add_argument("--source", required=True, help="parquet or CSV batch whose records are sent")
    parser.add_argument("--log", required=True, help="JSON-lines file to append outcomes to")
    parser.add_argument("--target", default=None, help="label column: sent to /feedback, never to /predict")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second in all (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="client threads (default 2)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until SIGTERM)")
    parser.add_argument("--no-feedback", action="store_true", help="do not post labels")
    parser.add_argument("--pid-file", default=None, help="write this process's pid here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rate <= 0 or args.threads < 1:
        parser.error("--rate must be > 0 and --threads >= 1")
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    url = args.url.rstrip("/")
    source = RecordSource(Path(args.source), wait_feature_names(url, wait=60.0), args.target)
    log = TrafficLog(args.log)
    workload = Workload(url, source, log, rate=args.rate, threads=args.threads, feedback=not args.no_feedback)
    signal.signal(signal.SIGTERM, lambda *_: workload.stop.set())
    try:
        workload.run(args.duration)
    except KeyboardInterrupt:
        workload.stop.set()
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
