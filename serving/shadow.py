"""The shadow challenger's own process: mirrored rows are predicted outside the worker's GIL.

A challenger predicting in a thread of the worker shares the worker's GIL with the
champion's event loop and model threads, whatever its CPU priority. Measured with
``benchmarks/shadow.py`` (2 workers, 16 connections, every request mirrored, quiet
machine): the champion's p99 was 1.53x the p99 without a shadow; with the thread
doing everything but the challenger's ``predict`` (same queue, same shadow log), 0.98x.
So the worker's shadow thread (``serving.release.ShadowMirror``) hands each batch to a
child process, ``python -m serving.shadow``, niced to 19, and waits for its answer
without holding the GIL.

- The child gets the challenger once per version as skops bytes (``skops.io.dumps`` in
  the worker) and loads them with the reviewed trusted types, as every artifact is
  loaded (``serving.modelio.loads_sklearn_model``): nothing model-shaped is unpickled.
- It answers each batch with the float64 values and scores as raw bytes: the worker
  unpickles nothing from it.
- A child that dies, hangs longer than ``timeout_seconds`` or fails a batch fails that
  batch only (``ShadowFailed``; the mirror counts it as ``failed``): the batch in flight,
  or the next one when it died so recently that its socket is still open. A dead or hung
  child is replaced at the next batch. The child exits when its worker does (its end of
  the socket closes).

Example:
    >>> process = ShadowProcess(extra_trusted=())
    >>> prediction = process.predict(challenger, {"f0": [0.1, 0.2], "channel": ["pos", "atm"]})
    >>> process.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson

from checkpoints.exceptions import SelfhealError
from serving import processes
from serving.model import LoadedModel, ModelThreads, Prediction
from serving.modelio import import_skops_lean, loads_sklearn_model
from serving.schema import FeatureSchema

logger = logging.getLogger(__name__)


class ShadowFailed(SelfhealError):
    """The shadow process gave no prediction for a batch (it died, hung, or the challenger failed)."""


class ShadowProcess:
    """The worker's side of its shadow child (see the module docstring); one caller at a time.

    Attributes:
        extra_trusted: skops types config adds to the reviewed ones (the child checks the same list).
        timeout_seconds: the longest wait for one answer (a model load included) before the child is replaced.
    """

    def __init__(self, extra_trusted: Iterable[str] = (), timeout_seconds: float = 120.0) -> None:
        self.extra_trusted = tuple(extra_trusted)
        self.timeout_seconds = timeout_seconds
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._loaded: tuple[str, str] | None = None  # (name, version) the child holds
        self._refused: tuple[tuple[str, str], str] | None = None  # a version the child could not load, and why
        self.busy_seconds = 0.0
        """CPU seconds the child spent on the last batch's prediction (0 when it gave none)."""

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def predict(self, model: LoadedModel, columns: dict[str, list[Any]]) -> Prediction:
        """The challenger's values and scores for validated columns (``labels`` are the values).

        Raises:
            ShadowFailed: the child died, hung, or could not load or run the model.
        """
        self.busy_seconds = 0.0
        key = (model.ref.name, model.version)
        if self._refused is not None and self._refused[0] == key:
            raise ShadowFailed(self._refused[1])
        try:
            conn = self._connection()
            if self._loaded != key:
                self._loaded = None
                data = _dumps(model.model)
                conn.send(("model", key, model.ref, model.schema.columns, data, self.extra_trusted, model.example))
                try:
                    self._answer(conn)
                except ShadowFailed as exc:  # not sent again with every batch
                    self._refused = (key, f"the shadow process could not load it: {exc}")
                    raise ShadowFailed(self._refused[1]) from None
                self._loaded = key
            conn.send(("predict", key, columns))
            header = self._answer(conn)
            values = self._array(conn, header["rows"])
            scores = self._array(conn, header["rows"]) if header["scores"] else None
            self.busy_seconds = float(header["cpu_seconds"])
        except (OSError, EOFError, TimeoutError) as exc:
            self._replace()
            raise ShadowFailed(f"the shadow process gave no answer: {type(exc).__name__}: {exc}") from None
        return Prediction(values, values, scores)

    def close(self) -> None:
        """Stop the child (it exits on the closed socket; killed after 5 s)."""
        self._stop(grace=5.0)

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
        if self._proc is not None:
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._loaded = None

    def _receive(self, conn: Connection) -> bytes:
        if not conn.poll(self.timeout_seconds):
            raise TimeoutError(f"no answer within {self.timeout_seconds:g} s")
        return conn.recv_bytes()

    def _answer(self, conn: Connection) -> dict[str, Any]:
        header: dict[str, Any] = orjson.loads(self._receive(conn))
        if not header["ok"]:
            raise ShadowFailed(header["error"])
        return header

    def _array(self, conn: Connection, rows: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        values = np.frombuffer(self._receive(conn), dtype=np.float64)
        if len(values) != rows:
            raise EOFError(f"the shadow process sent {len(values)} values for {rows} rows")
        return values


def _dumps(model: Any) -> bytes:
    import skops.io  # why local: skops imports all of scikit-learn

    data: bytes = skops.io.dumps(model)
    return data


def serve(conn: Connection) -> None:
    """The child's loop: load what the worker sends, predict what it asks, until the socket closes."""
    loaded: LoadedModel | None = None
    key: tuple[str, str] | None = None
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        replies: list[bytes]
        try:
            if message[0] == "model":
                _, key, ref, columns, data, extra_trusted, example = message
                if loaded is not None:
                    loaded.close()
                loaded = None
                model = loads_sklearn_model(data, extra_trusted)
                loaded = LoadedModel(ref, model, FeatureSchema(columns), example, threads=ModelThreads(1, 1))
                loaded.warm_up()  # as in the worker: the compiled preprocessing once verified (~2.5 ms a call less)
                replies = [orjson.dumps({"ok": True})]
            else:
                _, wanted, features = message
                if loaded is None or wanted != key:
                    raise ShadowFailed(f"version {wanted[1]} is not loaded in the shadow process")
                cpu = time.process_time()
                prediction = loaded.predict(features)
                scores = prediction.scores
                cpu = time.process_time() - cpu
                header = {"ok": True, "rows": len(prediction.values), "scores": scores is not None, "cpu_seconds": cpu}
                replies = [orjson.dumps(header)]
                replies.append(np.ascontiguousarray(prediction.values, dtype=np.float64).tobytes())
                if scores is not None:
                    replies.append(np.ascontiguousarray(scores, dtype=np.float64).tobytes())
        except Exception as exc:  # noqa: BLE001 - the challenger's own code may raise anything: the batch fails
            replies = [orjson.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"})]
        for reply in replies:
            conn.send_bytes(reply)


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.shadow FD``: serve the worker at the other end of socket ``FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m serving.shadow FD  (started by a model server worker, not by hand)\n")
        return 2
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
