"""The golden probe: replay the champion's golden set against the live server and compare.

A live model can answer wrongly while every health check is green (an artifact replaced
on disk, a feature-order mix-up, a library upgrade that computes differently). The
pipeline froze, at promotion, a sample of the champion's holdout with the outputs of the
registered artifact (``flows.pipeline.golden``); every ``golden.interval_seconds`` the
healer POSTs those records to ``/predict`` and compares: labels exactly, scores (and
regression values) within ``golden.tolerance``. A difference is a ``MODEL_MISMATCH``
signal; each verdict change is recorded (``checkpoints.golden``) for the batch-scoring gate.

No verdict (nothing recorded, no signal) when the server does not answer (serving_down's
business), when another version or the fallback chain answered (a server that has not
loaded a new champion yet, a rollback pin, an open breaker: other probes' business), or
when the champion has no golden set (promoted before sets existed, or outside the pipeline).

Example:
    >>> replay, why = replay_golden(ctx)
    >>> replay.passed if replay else why
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from checkpoints.exceptions import CheckpointError, RegistryUnavailable, ServingUnavailable
from checkpoints.golden import PROBE_REQUEST_PREFIX, GoldenProbe, compare, golden_set, record_probe
from checkpoints.incidents import Incident
from flows.healer.remedies import HealContext, Outcome, server_ready
from flows.monitor.passes import forget_prediction_reference
from flows.monitor.signals import Severity, Signal, SignalKind, Window
from flows.registry import CHAMPION

logger = logging.getLogger(__name__)

#: Differing records kept as evidence.
_SHOWN = 3
#: How long a replay waits for the server's answer (a tick must not stall behind a throttled link).
_ANSWER_SECONDS = 5.0


@dataclass(frozen=True)
class Replay:
    """What the server answered to a version's golden set.

    Attributes:
        version: the champion whose set was replayed.
        served_version: the version the server said answered.
        rows: records replayed.
        differences: the records answered otherwise (row, expected, served), all of them.
    """

    version: str
    served_version: str
    rows: int
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.passed:
            return f"golden replay of v{self.version}: {self.rows} records answered as frozen"
        return (
            f"golden replay of v{self.version}: {len(self.differences)} of {self.rows} records answered otherwise "
            f"by the server (serving v{self.served_version})"
        )

    def to_evidence(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "served_version": self.served_version,
            "rows": self.rows,
            "differing": len(self.differences),
            "first": self.differences[:_SHOWN],
        }


def replay_golden(ctx: HealContext) -> tuple[Replay | None, str]:
    """Replay the champion's golden set against the server: (the replay, "") or (None, why there is no verdict)."""
    try:
        champion = ctx.registry.by_alias(CHAMPION)
    except RegistryUnavailable as exc:
        return None, f"the registry does not answer: {exc}"
    if champion is None:
        return None, "no champion"
    rows = golden_set(ctx.lake, champion.version, champion.run_id or "")
    if not rows:
        return None, f"v{champion.version} has no golden set"
    try:
        request_id = f"{PROBE_REQUEST_PREFIX}{uuid.uuid4().hex[:16]}"  # kept out of the monitor's traffic
        status, body = ctx.server.predict([r.record for r in rows], timeout=_ANSWER_SECONDS, request_id=request_id)
    except ServingUnavailable as exc:
        return None, str(exc)
    if status == 422:  # the served model refuses records the registered one took: it is not that model
        ready = server_ready(ctx)
        serving = str(ready.get("model_version")) if ready else "?"
        if serving != champion.version:  # a server yet to load a champion with other features
            return None, f"refused by v{serving}, not the champion v{champion.version}"
        served = str(body.get("detail"))[:300]
        differences = [{"row": r.row, "expected": r.expected, "served": f"refused: {served}"} for r in rows]
        return Replay(champion.version, serving, len(rows), differences), ""
    if status != 200:
        return None, f"POST /predict answered {status}"
    served_version, served_by = str(body.get("model_version")), body.get("served_by")
    if served_by != "primary" or served_version != champion.version:
        return None, f"v{served_version} ({served_by}) answered, not the champion v{champion.version}"
    differences = compare(rows, body.get("predictions") or [], body.get("scores"), ctx.cfg.golden.tolerance)
    return Replay(champion.version, served_version, len(rows), differences), ""


def _record(ctx: HealContext, replay: Replay, now: datetime) -> None:
    """The verdict into ``golden_probes`` (when it changed), for the batch-scoring gate; a lake error is only logged."""
    probe = GoldenProbe(
        replay.version,
        now,
        replay.passed,
        replay.rows,
        len(replay.differences),
        replay.served_version,
        replay.summary(),
        replay.differences[:_SHOWN],
    )
    try:
        record_probe(ctx.lake, probe)
    except (CheckpointError, OSError) as exc:
        logger.warning("golden verdict of v%s not recorded: %s", replay.version, exc)


def probe_golden(ctx: HealContext, now: datetime) -> list[Signal]:
    """Every ``golden.interval_seconds``: ``MODEL_MISMATCH`` when the server answers the champion's set otherwise."""
    cfg = ctx.cfg
    if not cfg.golden.enabled or not cfg.serving.url:
        return []
    last = ctx.probed_at.get("golden")
    if last is not None and time.monotonic() - last < cfg.golden.interval_seconds:
        return []
    ctx.probed_at["golden"] = time.monotonic()
    replay, why = replay_golden(ctx)
    if replay is None:
        logger.info("golden probe: no verdict: %s", why)
        return []
    _record(ctx, replay, now)
    if replay.passed:
        return []
    logger.warning("%s", replay.summary())
    window = Window(now - timedelta(seconds=1), now)
    return [Signal(SignalKind.MODEL_MISMATCH, Severity.CRITICAL, replay.to_evidence(), window, source="healer")]


def verify_replay(ctx: HealContext, applied_at: datetime) -> Outcome:
    """A ``model_mismatch`` repair's proof: the champion's golden set is answered as frozen again.

    A replay that still differs is pending for one probe interval after the repair (the
    server's other workers take the reload within a second), then failed.
    """
    replay, why = replay_golden(ctx)
    if replay is None:
        return Outcome(False, f"golden replay: no verdict yet ({why})", pending=True)
    now = datetime.now(UTC)
    _record(ctx, replay, now)
    ctx.probed_at["golden"] = time.monotonic()
    if replay.passed:
        return Outcome(True, replay.summary(), {"golden": replay.to_evidence()})
    waited = (now - applied_at).total_seconds()
    return Outcome(
        False, replay.summary(), {"golden": replay.to_evidence()}, pending=waited < ctx.cfg.golden.interval_seconds
    )


def forget_mismatched_reference(ctx: HealContext, incident: Incident) -> None:
    """A ``model_mismatch`` resolved: drop the prediction reference of the version that answered otherwise.

    The monitor makes a version's prediction reference from the first window it serves:
    a version swapped soon after its promotion got the wrong artifact's predictions as
    its reference. Kept, the registered model would read as prediction drift once it
    serves under that version again (a restart that reloads it, or a person restoring the
    file and promoting it back), and make any input drift look felt. Never raises: the
    monitor then compares with the old reference, as before.
    """
    version = incident.evidence.get("served_version") or incident.evidence.get("model_version")
    if not version:
        return
    try:
        if forget_prediction_reference(ctx.lake, str(version)):
            logger.info("dropped the prediction reference of v%s: the mismatched model may have made it", version)
    except CheckpointError as exc:
        logger.warning("could not drop the prediction reference of v%s: %s", version, exc)
