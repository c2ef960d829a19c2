"""Who answers a batch: the primary behind its breaker, then the fallback, then the baseline.

The primary runs in its own threads with a per-call timeout, except a small batch
that only walks the model's compiled preprocessing and trees (``LoadedModel.predict_inline``):
that runs on the event loop, where it costs less than the hand-off to a thread and back
(behind the HAProxy front, +12% throughput at 16 connections), and it cannot hang. An
error or a timeout counts against the breaker, and the same batch is then answered by the
fallback (``@previous``), or by the baseline as a last resort. While the
breaker is open the primary is not called at all. Nothing here holds a lock
while a model predicts (see ``serving.breaker``).

A canary request routed to a release's challenger (``variant="challenger"``) is
tried on the challenger first, behind a breaker of its own (its failures never
open the champion's); when it fails, the champion's chain answers it as its
fallback, and the outcome still says the request was the challenger's.

Example:
    >>> predictor = Predictor(BreakerPolicy(fail_max=5, reset_seconds=10, timeout_seconds=1))
    >>> outcome = await predictor.predict(models, columns)
    >>> outcome.served_by, outcome.model_version
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from checkpoints.exceptions import SelfhealError, ServingUnavailable
from serving.breaker import BreakerPolicy, ModelBreaker
from serving.model import LoadedModel, Prediction
from serving.release import Variant
from serving.reload import ModelSet

logger = logging.getLogger(__name__)

ServedBy = Literal["primary", "fallback", "baseline"]


class PredictTimeout(SelfhealError, TimeoutError):
    """A model call took longer than the policy's timeout."""


@dataclass(frozen=True)
class Outcome:
    """A batch's answer and who gave it."""

    prediction: Prediction
    model_version: str
    served_by: ServedBy
    variant: Variant = "champion"
    """The release arm the batch was routed to (``served_by`` says whether that arm's own model answered)."""


class Predictor:
    """The fallback chain for one worker (one breaker around its primary)."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        on_breaker_change: Callable[[str], None] | None = None,
        on_model_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.breaker = ModelBreaker(policy, on_state_change=on_breaker_change)
        self.challenger_breaker = ModelBreaker(policy, name="challenger-model")
        self._on_model_error = on_model_error
        self._last_error_log = 0.0

    async def predict(self, models: ModelSet, columns: dict[str, list[Any]], variant: Variant = "champion") -> Outcome:
        """Answer one batch of validated columns (routed to the release's challenger when ``variant`` says so).

        Raises:
            ServingUnavailable: no model is loaded and there is no baseline.
        """
        if variant == "challenger" and models.challenger is not None:
            prediction = await self._guarded(self.challenger_breaker, "challenger", models.challenger, columns)
            if prediction is not None:
                return Outcome(prediction, models.challenger.version, "primary", "challenger")
            outcome = await self.predict(models, columns)
            served_by: ServedBy = "fallback" if outcome.served_by == "primary" else outcome.served_by
            return Outcome(outcome.prediction, outcome.model_version, served_by, "challenger")
        if models.primary is not None:
            prediction = await self._guarded(self.breaker, "primary", models.primary, columns)
            if prediction is not None:
                return Outcome(prediction, models.primary.version, "primary")
        if models.fallback is not None:
            try:
                prediction = await self._call(models.fallback, columns)
            except Exception as exc:  # any failure of the model's code: the baseline answers instead
                self._failed("fallback", models.fallback, exc)
            else:
                return Outcome(prediction, models.fallback.version, "fallback")
        if models.baseline is not None:
            rows = len(next(iter(columns.values())))
            return Outcome(models.baseline.predict(rows), models.baseline.version, "baseline")
        raise ServingUnavailable("no model could answer: none is loaded yet (see GET /ready for the last load error)")

    async def _guarded(
        self, breaker: ModelBreaker, role: str, model: LoadedModel, columns: dict[str, list[Any]]
    ) -> Prediction | None:
        """The model's prediction when its breaker admits the call and it succeeds; None: the next in line answers."""
        admission = breaker.admit()
        if admission is None:
            return None
        try:
            prediction = await self._call(model, columns)
        except Exception as exc:  # any failure of the model's code counts against its breaker, then falls back
            breaker.record(admission, exc)
            self._failed(role, model, exc)
            return None
        breaker.record(admission, None)
        return prediction

    async def _call(self, model: LoadedModel, columns: dict[str, list[Any]]) -> Prediction:
        inline = model.predict_inline(columns)  # our own bounded numpy walk: cheaper than a thread hand-off
        if inline is not None:
            return inline
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(model.pool, model.predict, columns)
        try:
            return await asyncio.wait_for(future, self.policy.timeout_seconds)
        except TimeoutError:
            raise PredictTimeout(f"version {model.version} took longer than {self.policy.timeout_seconds}s") from None

    def _failed(self, role: str, model: LoadedModel, exc: BaseException) -> None:
        reason = "timeout" if isinstance(exc, PredictTimeout) else "error"
        if self._on_model_error is not None:
            self._on_model_error(role, reason)
        now = time.monotonic()
        if now - self._last_error_log > 5.0:  # one line per 5 s, not one per batch
            self._last_error_log = now
            logger.warning("%s model (version %s) failed: %s: %s", role, model.version, type(exc).__name__, exc)
