"""Progressive delivery on the server: a challenger beside the champion, in shadow or canary.

The release state is one small JSON document, the registered model's
``selfheal.release`` tag, written by the release analysis (``flows.release.controller``) and
read by every worker on its registry poll (and at once after an admin reload).
The registry is the right home for it: it is already the one place every worker
polls for what to serve, it is reachable from every pod when the server scales
out (a file under the selfheal home is not), and moving the aliases and the
routing in the same store keeps them from disagreeing for longer than a poll.
The analysis' measurements go to the lake (``release_analysis``), not here: a
tag holds a few kilobytes at most.

Routing is a pure function of the request id (``routes_to_challenger``): the same
id always lands on the same side, the share of ids sent to the challenger is the
configured share up to sampling noise, and anyone can recompute which requests
the challenger could have seen.

- **canary**: ``share`` of the requests are answered by the challenger (its own
  breaker; when it fails, the champion answers the same request);
- **shadow**: only the champion answers; ``share`` of the requests are copied to
  a bounded queue that one background thread hands to the challenger's own process
  (``serving.shadow``: off the worker's GIL, at the lowest CPU priority). A full
  queue drops the copy; the champion's answer never waits for it.

Example:
    >>> state = ReleaseState.from_tag(tags.get(RELEASE_TAG))
    >>> if state is not None and state.routing:
    ...     routes_to_challenger(request_id, state.share)
"""

from __future__ import annotations

import json
import logging
import pickle
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

# The tag names are the registry's; re-exported for the release's readers.
from serving.registry import OUTCOME_TAG as OUTCOME_TAG
from serving.registry import RELEASE_TAG as RELEASE_TAG

if TYPE_CHECKING:  # types only: flows.release imports this module, and serving.model pulls in MLflow
    from serving.model import LoadedModel, Prediction
    from serving.shadow import ShadowAnswer, ShadowProcess

logger = logging.getLogger(__name__)

SHADOW_TABLE = "shadow_log"

Mode = Literal["shadow", "canary"]
Variant = Literal["champion", "challenger"]
#: ``running``: the challenger gets traffic; ``inconclusive``: held at its share until a person decides.
ROUTING_STATUSES = frozenset({"running", "inconclusive"})
_BUCKETS = 10_000


def routes_to_challenger(request_id: str, share: float) -> bool:
    """Whether the request with this id goes to the challenger at ``share`` (deterministic, in [0, 1]).

    A list request's rows (``<id>:<i>``) follow their request id.
    """
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    return zlib.crc32(request_id.encode()) % _BUCKETS < share * _BUCKETS


@dataclass(frozen=True)
class ReleaseState:
    """Where a release is (the ``selfheal.release`` tag).

    Attributes:
        release_id: unique per release (the analysis keys its measurements with it).
        mode: ``shadow`` or ``canary``.
        challenger: the version on trial.
        champion: the champion when the release started.
        share: the share of requests the challenger sees now (canary: answers; shadow: mirrored).
        step: index of the current canary step.
        status: running | inconclusive | promoted | rolled_back | aborted | superseded.
        started_at: epoch seconds.
        step_started_at: epoch seconds when the current share took effect.
        updated_at: epoch seconds of the last change.
        max_share: the largest share the challenger was ever given in this release.
        measurements: how many analysis measurements were taken.
        counts: per metric, [successful, failed, inconclusive] measurements.
        detail: the last verdict in words.
        owed_incident: a failed analysis's ``bad_release`` incident not yet wholly recorded (the
            lake failed while it was written): its ``id``, ``detected_at`` and ``failed``
            measurements; the next look records the rest (``flows.release.controller``).
    """

    release_id: str
    mode: Mode
    challenger: str
    champion: str | None
    share: float
    step: int = 0
    status: str = "running"
    started_at: float = field(default_factory=time.time)
    step_started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    max_share: float = 0.0
    measurements: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)
    detail: str = ""
    owed_incident: dict[str, Any] | None = None

    @property
    def routing(self) -> bool:
        """Whether the challenger gets traffic in this state."""
        return self.status in ROUTING_STATUSES and self.share > 0.0

    def to_tag(self) -> str:
        data = asdict(self)
        if data["owed_incident"] is None:  # the tag an older reader knows, when nothing is owed
            del data["owed_incident"]
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_tag(cls, text: str | None) -> ReleaseState | None:
        """The state in a tag value; None when unset or unreadable (a bad tag never stops serving)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}  # a newer writer's extra keys are not ours to refuse
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as exc:
            logger.warning("ignoring unreadable %s tag: %s", RELEASE_TAG, exc)
            return None

    def evolve(self, **changes: Any) -> ReleaseState:
        """A copy with ``changes`` and a fresh ``updated_at``."""
        return replace(self, updated_at=time.time(), **changes)


@dataclass(frozen=True)
class ShadowItem:
    """Rows a champion batch answered, to be predicted by the challenger off the request path."""

    columns: dict[str, list[Any]]
    rows: int
    row_ids: list[str]
    received_us: list[int]


@dataclass(frozen=True)
class MirroredBatch:
    """Mirrored requests as they wait in the shadow queue and travel to the challenger's process: pickled.

    A request's columns held as Python lists are ~20 objects the worker's garbage collector
    tracks; held until the shadow thread sends them, they outlive the young generation and
    make the worker collect its older ones more often, pausing the champion's event loop.
    Measured (``benchmarks/shadow.py``'s load, one worker, 15 s): 8-16 second-generation
    collections with a shadow, 1-2 without. Bytes are not tracked. The pickle is read back
    by the worker's own shadow process (``serving.shadow``), or by the worker itself to log
    rows that process did not take.
    """

    rows: int
    packed: list[bytes]

    @staticmethod
    def pack(columns: dict[str, list[Any]], row_ids: list[str], received_us: int) -> bytes:
        """One request's copy, as the queue holds it."""
        return pickle.dumps((columns, row_ids, [received_us] * len(row_ids)), protocol=pickle.HIGHEST_PROTOCOL)

    def items(self) -> list[ShadowItem]:
        """The requests, unpickled (only the worker's own pickles: see the class docstring)."""
        return [ShadowItem(columns, len(ids), ids, ts) for columns, ids, ts in map(pickle.loads, self.packed)]


def gathered(items: list[ShadowItem]) -> dict[str, list[Any]]:
    """The mirrored requests' columns (the champion's), each concatenated over ``items``."""
    names = items[0].columns.keys() if items else ()
    return {n: list(chain.from_iterable(i.columns[n] for i in items)) for n in names}


def shadow_log_columns(
    items: list[ShadowItem],
    columns: dict[str, list[Any]],
    names: Iterable[str],
    version: str,
    prediction: Prediction | None,
    latency_ms: float,
) -> dict[str, Any]:
    """One ``shadow_log`` batch: the challenger's features ``names`` from ``columns`` (``gathered(items)``;
    one the champion did not send is null), and its answer (None: ``error`` rows)."""
    rows = sum(i.rows for i in items)
    data: dict[str, Any] = {n: columns[n] for n in names if n in columns}
    data["_request_id"] = list(chain.from_iterable(i.row_ids for i in items))
    data["_ts"] = list(chain.from_iterable(i.received_us for i in items))
    data["_model_version"] = [version] * rows
    data["_served_by"] = ["primary" if prediction is not None else "error"] * rows
    data["_prediction"] = prediction.values if prediction is not None else None
    data["_score"] = prediction.scores if prediction is not None else None
    data["_latency_ms"] = [latency_ms] * rows
    data["_variant"] = ["challenger"] * rows
    return data


#: Called with each batch's answer: None when the shadow process did not take the rows (it logged none of them).
ShadowHook = Callable[["LoadedModel", MirroredBatch, "ShadowAnswer | None", float], None]


class ShadowMirror:
    """One background thread getting mirrored rows predicted by the challenger (see the module docstring).

    ``offer`` never blocks: when ``max_items`` copies are already waiting, the copy is
    dropped and counted. The thread takes everything waiting (up to ``max_rows``) as one
    model call, so under load the challenger costs one call per batch, not per request.
    The call runs in ``process`` (``serving.shadow.ShadowProcess``: the challenger's own
    process, which also logs the rows, so neither holds the worker's GIL); the thread
    itself only sends, waits and counts. It is not niced: a niced thread that holds the
    GIL is descheduled while the champion's threads wait for that GIL (with this thread at
    niceness 19 the champion's p99 was 1.36-1.42x the p99 without a shadow; at 0, 1.08x).

    After each call the thread rests ``(1 - cpu_share) / cpu_share`` times the CPU time the
    challenger's process used since its previous answer (prediction and log writing), so that
    process is busy at most ``cpu_share`` of the time. The child's low CPU priority alone
    did not keep it from costing the champion (``benchmarks/shadow.py``, thread not niced:
    unpaced, the children took 3.6 CPU s per 15 s round and the p99 ratio was 1.24; paced
    at 0.1, 1.7-2.1 CPU s and 1.08). Resting also makes the batches bigger, and a model
    call's cost hardly depends on its rows, so the same CPU predicts more of the mirrored
    rows; the rest overflow the queue and are counted.

    Example:
        >>> mirror = ShadowMirror(on_answered=count_rows, process=ShadowProcess(log=LogTarget.of(settings)))
        >>> mirror.start()
        >>> mirror.offer(challenger, columns, ["id"], received_us)   # from the request path
    """

    def __init__(
        self,
        on_answered: ShadowHook,
        *,
        process: ShadowProcess,
        cpu_share: float = 0.1,
        max_items: int = 256,
        max_rows: int = 512,
    ) -> None:
        if not 0 < cpu_share <= 1:
            raise ValueError(f"cpu_share must be in (0, 1], not {cpu_share}")
        self._on_answered = on_answered
        self._process = process
        self._busy = 0.0  # the challenger's process's CPU seconds behind the last answer
        self._rest = (1.0 - cpu_share) / cpu_share
        self._stopping = threading.Event()
        self._queue: queue.Queue[tuple[LoadedModel, int, bytes] | None] = queue.Queue(maxsize=max_items)
        self.max_rows = max_rows
        self.dropped = 0
        self.predicted = 0  # rows the challenger predicted (this worker's; /ready shows both)
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()  # challenger versions whose failure was logged at warning once

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-mirror", daemon=True)
        self._thread.start()

    def offer(self, model: LoadedModel, columns: dict[str, list[Any]], row_ids: list[str], received_us: int) -> bool:
        """Queue a copy of a request's rows for the challenger; False (dropped) when the queue is full.

        The queue is full most of the time under load (the thread rests between calls), so the
        copy is only made once there is room for it.
        """
        if self._queue.full():
            self.dropped += len(row_ids)
            return False
        try:
            self._queue.put_nowait((model, len(row_ids), MirroredBatch.pack(columns, row_ids, received_us)))
        except queue.Full:  # filled by another caller since
            self.dropped += len(row_ids)
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._process.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            model, rows, packed = first[0], first[1], [first[2]]
            while rows < self.max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._predict(model, MirroredBatch(rows, packed))
                    return
                if nxt[0] is not model:  # the challenger changed: finish the old one's batch first
                    self._predict(model, MirroredBatch(rows, packed))
                    model, rows, packed = nxt[0], 0, []
                packed.append(nxt[2])
                rows += nxt[1]
            self._predict(model, MirroredBatch(rows, packed))
            if self._stopping.wait(self._busy * self._rest):
                return

    def _predict(self, model: LoadedModel, batch: MirroredBatch) -> None:
        if not batch.packed:
            return
        started = time.perf_counter()
        answer: ShadowAnswer | None = None
        try:
            answer = self._process.mirror(model, batch)
            error = answer.error
        except Exception as exc:  # noqa: BLE001 - a failing challenger is a measurement (counted), not a crash
            error = f"{type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self._busy = answer.cpu_seconds if answer is not None else 0.0
        if error is None and answer is not None:
            self.predicted += answer.rows
        else:  # one warning per version says it fails; shadow_rows{outcome="failed"} counts every batch
            level = logging.DEBUG if model.version in self._failing else logging.WARNING
            self._failing.add(model.version)
            logger.log(level, "shadow challenger v%s failed: %s", model.version, error)
        try:
            self._on_answered(model, batch, answer, elapsed_ms)
        except Exception:  # the shadow thread must outlive a bug in the recording hook
            logger.exception("recording shadow predictions failed")
