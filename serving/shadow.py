"""The shadow challenger's own process: mirrored rows are predicted, and logged, outside the worker's GIL.

A challenger predicting in a thread of the worker shares the worker's GIL with the
champion's event loop and model threads, whatever its CPU priority. Measured with
``benchmarks/shadow.py`` (2 workers, 16 connections, every request mirrored, quiet
machine): the champion's p99 was 1.53x the p99 without a shadow; with the thread
doing everything but the challenger's ``predict`` (same queue, same shadow log), 0.98x.
So the worker's shadow thread (``serving.release.ShadowMirror``) hands each batch to a
child process, ``python -m serving.shadow``, niced to 19 and scheduled only on idle CPU,
and waits for its answer without holding the GIL.

The child also writes the ``shadow_log`` table itself (its own ``InferenceLog``, with the
worker's lake, dead-letter folder and flush settings): building those rows and appending
them in the worker cost the champion more than the prediction did (same benchmark, load
~1: throughput -29% and p99 1.69x with the worker writing them; -1% and 1.17x without).
The worker sends the mirrored rows as they came (pickled when queued, so its garbage
collector never scans them: ``serving.release.MirroredBatch``) and gets back a count.

- The child gets the challenger once per version as skops bytes (``skops.io.dumps`` in
  the worker) and loads them with the reviewed trusted types, as every artifact is
  loaded (``serving.modelio.loads_sklearn_model``): nothing model-shaped is unpickled.
- A challenger that fails a batch is an answer (``ShadowAnswer.error``): the child logs
  those rows as ``error``, as the worker logs a failed champion.
- A child that dies, hangs longer than ``timeout_seconds`` or cannot load the challenger
  did not take the batch (``ShadowFailed``; the mirror logs its rows as ``error``
  itself): the batch in flight, or the next one when it died so recently that its socket
  is still open. A dead or hung child is replaced at the next batch. The child exits when
  its worker does (its end of the socket closes), once its log is written; it ignores SIGTERM
  and SIGINT, which a stop sends to the whole process tree. A child killed while rows wait
  in its log (hung past ``timeout_seconds``, or still writing 10 s after its worker stopped)
  loses them.

Example:
    >>> process = ShadowProcess(extra_trusted=(), log=LogTarget.of(settings))
    >>> answer = process.mirror(challenger, MirroredBatch(1, [MirroredBatch.pack({"f0": [0.1]}, ["id"], ts)]))
    >>> process.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import orjson

from checkpoints.exceptions import SelfhealError
from serving import processes
from serving.inference_log import LogTarget
from serving.metrics import LogMetrics, mark_worker_dead
from serving.model import LoadedModel, ModelThreads, Prediction
from serving.modelio import import_skops_lean, loads_sklearn_model
from serving.release import SHADOW_TABLE, MirroredBatch, gathered, shadow_log_columns
from serving.schema import FeatureSchema

if TYPE_CHECKING:
    from serving.inference_log import InferenceLog

logger = logging.getLogger(__name__)


class ShadowFailed(SelfhealError):
    """The shadow process did not take a batch (it died, hung, or could not load the challenger)."""


@dataclass(frozen=True)
class ShadowAnswer:
    """The child's answer for one batch.

    Attributes:
        rows: the rows it took (and logged).
        error: why the challenger failed them (logged as ``error``), or None when it predicted them.
        cpu_seconds: the child's CPU time since its previous answer (prediction and log writing).
    """

    rows: int
    error: str | None
    cpu_seconds: float


class ShadowProcess:
    """The worker's side of its shadow child (see the module docstring); one caller at a time.

    Attributes:
        extra_trusted: skops types config adds to the reviewed ones (the child checks the same list).
        log: where the child writes ``shadow_log`` (None: it predicts and counts only).
        timeout_seconds: the longest wait for one answer (a model load included) before the child is replaced.
    """

    def __init__(
        self, extra_trusted: Iterable[str] = (), log: LogTarget | None = None, timeout_seconds: float = 120.0
    ) -> None:
        self.extra_trusted = tuple(extra_trusted)
        self.log = log
        self.timeout_seconds = timeout_seconds
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._loaded: tuple[str, str] | None = None  # (name, version) the child holds
        self._refused: tuple[tuple[str, str], str] | None = None  # a version the child could not load, and why

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def mirror(self, model: LoadedModel, batch: MirroredBatch) -> ShadowAnswer:
        """Have the challenger predict (and the child log) the mirrored rows of ``batch``.

        Raises:
            ShadowFailed: the child died, hung, or could not load the model: it took none of the rows.
        """
        key = (model.ref.name, model.version)
        if self._refused is not None and self._refused[0] == key:
            raise ShadowFailed(self._refused[1])
        try:
            conn = self._connection()
            if self._loaded != key:
                self._loaded = None
                data = _dumps(model.model)
                conn.send(("model", key, model.ref, model.schema.columns, data, self.extra_trusted, model.example))
                header = self._answer(conn)
                if header["error"] is not None:  # not sent again with every batch
                    self._refused = (key, f"the shadow process could not load it: {header['error']}")
                    raise ShadowFailed(self._refused[1])
                self._loaded = key
            conn.send(("mirror", key, batch.rows, batch.packed))
            header = self._answer(conn)
        except (OSError, EOFError, TimeoutError) as exc:
            self._replace()
            raise ShadowFailed(f"the shadow process gave no answer: {type(exc).__name__}: {exc}") from None
        if header["rows"] != batch.rows:  # it could not take them (a bug in the child)
            raise ShadowFailed(f"the shadow process did not take the batch: {header['error']}")
        return ShadowAnswer(header["rows"], header["error"], float(header["cpu_seconds"]))

    def close(self) -> None:
        """Stop the child (it writes its queued log rows and exits on the closed socket; killed after 10 s)."""
        self._stop(grace=10.0)

    def _connection(self) -> Connection:
        # Between batches a live child sends nothing: a readable socket means it closed (it died).
        if self._conn is not None and self._proc is not None and self._proc.poll() is None and not self._conn.poll(0):
            return self._conn
        self._replace()
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "serving.shadow", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._conn.send(("log", asdict(self.log) if self.log is not None else None))  # not in argv: it has secrets
        logger.info("shadow process %d started (niceness %d)", self._proc.pid, processes.BACKGROUND_NICENESS)
        return self._conn

    def _replace(self) -> None:
        """Drop a dead or hung child at once."""
        self._stop(grace=0.0)

    def _stop(self, grace: float) -> None:
        """Close the socket, give the child ``grace`` seconds to exit, then kill it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None  # taken first: a stopping worker may call this from two threads
        if proc is not None:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            mark_worker_dead(proc.pid)  # its log-queue gauge, had it no time to drop it itself
        self._loaded = None

    def _answer(self, conn: Connection) -> dict[str, Any]:
        if not conn.poll(self.timeout_seconds):
            raise TimeoutError(f"no answer within {self.timeout_seconds:g} s")
        header: dict[str, Any] = orjson.loads(conn.recv_bytes())
        return header


def _dumps(model: Any) -> bytes:
    import skops.io  # why local: skops imports all of scikit-learn

    data: bytes = skops.io.dumps(model)
    return data


class _Child:
    """The child's state: the challenger it holds and its shadow log."""

    def __init__(self, log: InferenceLog | None) -> None:
        self.log = log
        self.loaded: LoadedModel | None = None
        self.key: tuple[str, str] | None = None
        self._schema: Any = None
        self._cpu = time.process_time()

    def load(self, key: tuple[str, str], ref: Any, columns: Any, data: bytes, trusted: Any, example: Any) -> None:
        from serving.inference_log import inference_schema

        if self.loaded is not None:
            self.loaded.close()
        self.loaded = self.key = None
        model = loads_sklearn_model(data, trusted)
        self.loaded = LoadedModel(ref, model, FeatureSchema(columns), example, threads=ModelThreads(1, 1))
        self.loaded.warm_up()  # as in the worker: the compiled preprocessing once verified (~2.5 ms a call less)
        self.key = key
        self._schema = inference_schema(self.loaded.schema.arrow_fields)

    def mirror(self, wanted: tuple[str, str], batch: MirroredBatch) -> dict[str, Any]:
        from serving.inference_log import LogBatch

        loaded = self.loaded
        if loaded is None or wanted != self.key:
            raise ShadowFailed(f"version {wanted[1]} is not loaded in the shadow process")
        mirrored = batch.items()
        columns = gathered(mirrored)  # the champion's columns: the challenger may want others
        started = time.perf_counter()
        error: str | None = None
        prediction: Prediction | None = None
        try:
            prediction = loaded.predict(columns)
        except Exception as exc:  # noqa: BLE001 - the challenger's own code may raise anything: the batch fails
            error = f"{type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        rows = sum(i.rows for i in mirrored)
        if self.log is not None:
            names = loaded.schema.names
            data = shadow_log_columns(mirrored, columns, names, loaded.version, prediction, elapsed_ms)
            self.log.submit(LogBatch(SHADOW_TABLE, self._schema, data, rows))
        return {"rows": rows, "error": error}

    def reply(self, conn: Connection, header: dict[str, Any]) -> None:
        cpu = time.process_time()
        header["cpu_seconds"], self._cpu = cpu - self._cpu, cpu
        conn.send_bytes(orjson.dumps(header))

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        mark_worker_dead(os.getpid())


def serve(conn: Connection) -> None:
    """The child's loop: load what the worker sends, predict and log what it mirrors, until the socket closes."""
    try:
        kind, spec = conn.recv()
    except EOFError:  # the worker died before it said where to log
        return
    if kind != "log":
        raise ValueError(f"the shadow process expected its log settings first, not {kind!r}")
    log = LogTarget(**spec).build(LogMetrics()) if spec is not None else None
    if log is not None:
        log.start()
    child = _Child(log)
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            header: dict[str, Any]
            try:
                if message[0] == "model":
                    child.load(*message[1:])
                    header = {"error": None}
                else:
                    header = child.mirror(message[1], MirroredBatch(message[2], message[3]))
            except Exception as exc:  # noqa: BLE001 - a model that fails to load is an answer, not a crash
                header = {"rows": 0, "error": f"{type(exc).__name__}: {exc}"}
            child.reply(conn, header)
    finally:
        child.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.shadow FD``: serve the worker at the other end of socket ``FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m serving.shadow FD  (started by a model server worker, not by hand)\n")
        return 2
    # A stop signal to the whole process tree (``selfheal down``, Ctrl-C) must not cut the log
    # short: the child exits when its worker's end of the socket closes, once its log is written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes.yield_cpu()  # under a full CPU the champion's processes go first
    with contextlib.suppress(OSError, AttributeError):  # Linux: run only on a core nothing else wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from threadpoolctl import threadpool_limits

    from serving.settings import forbid_pickle

    forbid_pickle()
    import_skops_lean()  # skops' walk of all of scikit-learn also slows each model load (its module lookups)
    threadpool_limits(1)
    conn = Connection(int(args[0]))
    try:
        serve(conn)
    except (BrokenPipeError, ConnectionResetError):  # the worker is gone
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
