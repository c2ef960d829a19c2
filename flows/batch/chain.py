"""The models a batch is scored with: the server's fallback chain (``serving.predictor``), run chunk by chunk.

A chunk goes to ``@champion`` behind a breaker; when the champion raises on it (or takes
longer than ``BATCH_BREAKER.timeout_seconds``), the same chunk is answered by the
fallback (``@previous``), and by the baseline (the champion's constant prior) as a last
resort, exactly as ``Predictor.predict`` answers a request: this module only feeds it
chunks instead of micro-batches. Each prediction row records the version that answered
(``_model_version``) and which link of the chain it was (``_served_by``). Rows the input
contract refuses never reach the chain: no other model can fix bad input.

When every link fails, ``predict_frame`` raises ``ChainExhausted`` naming each model's
error (a chain of one model, ``ScoringChain.only``, raises that model's own error): the
chunk then waits in the dead-letter queue.

Example:
    >>> chain = ScoringChain(ModelSet(champion, previous, Baseline.from_model(champion)))
    >>> outcome = chain.predict_frame(checked.frame)
    >>> outcome.model_version, outcome.served_by     # "7", "fallback"
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pandas as pd

from checkpoints.exceptions import SelfhealError, ServingUnavailable
from serving.breaker import BreakerPolicy
from serving.model import LoadedModel, ModelThreads, Prediction
from serving.predictor import Outcome, Predictor, PredictTimeout
from serving.reload import ModelSet
from serving.schema import FeatureSchema

_T = TypeVar("_T")

#: Each model of the chain predicts a chunk in its own thread (``LoadedModel.pool``) with all the
#: machine's OpenMP/BLAS threads: batch work, run at low priority (``selfheal score`` yields the CPU).
BATCH_THREADS = ModelThreads(per_call=os.cpu_count() or 1, pool=1)

#: The chain's breaker for batch chunks: a chunk is far bigger than a request's micro-batch,
#: so a call may take minutes; three failed chunks in a row skip the champion for a minute.
BATCH_BREAKER = BreakerPolicy(fail_max=3, reset_seconds=60.0, timeout_seconds=600.0)


class ChainExhausted(SelfhealError):
    """No model of the chain answered a chunk (each one's error in the message)."""


class _Columns(dict[str, Any]):
    """A checked frame's columns (no copy), carrying the frame: each model of the chain predicts the frame itself."""

    def __init__(self, frame: pd.DataFrame) -> None:
        super().__init__((name, frame[name]) for name in frame.columns)
        self.frame = frame


class _Predictor(Predictor):
    """Serving's predictor over a checked frame, keeping the errors of the call under way (the reason names them).

    Only how one model is called differs: ``predict_frame`` on the frame ``validate_table``
    built in the signature's dtypes, not ``predict`` on a request's columns, which would
    turn a chunk into Python lists and back.
    """

    def __init__(self, policy: BreakerPolicy) -> None:
        super().__init__(policy)
        self.errors: list[tuple[str, LoadedModel, BaseException]] = []

    async def _call(self, model: LoadedModel, columns: dict[str, Any]) -> Prediction:
        assert isinstance(columns, _Columns)
        future = asyncio.get_running_loop().run_in_executor(model.pool, model.predict_frame, columns.frame)
        try:
            return await asyncio.wait_for(future, self.policy.timeout_seconds)
        except TimeoutError:
            raise PredictTimeout(f"version {model.version} took longer than {self.policy.timeout_seconds}s") from None

    def _failed(self, role: str, model: LoadedModel, exc: BaseException) -> None:
        self.errors.append((role, model, exc))
        super()._failed(role, model, exc)


class ScoringChain:
    """``@champion``, then ``@previous``, then the baseline: serving's ``Predictor`` over one ``ModelSet``.

    Attributes:
        models: the champion (``primary``), the fallback and the baseline.
        version: the champion's version (what the batch is said to be scored with).
        schema: the champion's input contract (every row is checked against it first).
    """

    def __init__(self, models: ModelSet, policy: BreakerPolicy = BATCH_BREAKER) -> None:
        if models.primary is None:
            raise ValueError("a scoring chain needs a champion (ModelSet.primary)")
        self.models = models
        self.version: str = models.primary.version
        self.schema: FeatureSchema = models.primary.schema
        self.predictor = _Predictor(policy)

    @classmethod
    def only(cls, model: LoadedModel) -> ScoringChain:
        """A chain of ``model`` alone: its failures are the chunk's (no fallback, no baseline)."""
        return cls(ModelSet(primary=model))

    def predict_frame(self, frame: pd.DataFrame) -> Outcome:
        """Answer the valid rows of a chunk (``TableCheck.frame``) from the first link of the chain that can.

        Raises:
            ChainExhausted: every link failed; with the champion alone, its own error.
        """
        self.predictor.errors = []
        try:
            return _run(self.predictor.predict(self.models, _Columns(frame)))
        except ServingUnavailable:
            errors = self.predictor.errors
            if len(errors) == 1 and self.models.fallback is None:
                raise errors[0][2] from None
            named = "; ".join(f"{role} v{model.version}: {type(exc).__name__}: {exc}" for role, model, exc in errors)
            held = named or "the breaker held the champion"
            raise ChainExhausted(f"no model of the chain answered ({held})") from None

    def close(self) -> None:
        """Stop every loaded model's prediction threads."""
        for model in (self.models.primary, self.models.fallback):
            if model is not None:
                model.close()


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run the predictor's coroutine to its end from synchronous code (in a thread of its own under a running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-chain") as pool:
        return pool.submit(asyncio.run, coroutine).result()
