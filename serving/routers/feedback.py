"""``POST /feedback``: ground-truth labels, by request id, into the ``feedback`` table.

Labels arrive late (hours or days after the prediction); they are joined with
the inference log on ``feedback.request_id == inference_log._request_id``. They
go through the same batched writer as predictions (so the answer is 202: queued,
written within the flush interval, spilled to the dead-letter folder if the
lake refuses them).
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field, field_validator

from serving.routers.deps import State

router = APIRouter(tags=["feedback"])


class Feedback(BaseModel):
    """One ground-truth label."""

    request_id: str = Field(min_length=1, max_length=256, description="an id from a /predict answer (`ids`)")
    label: float = Field(description="the true class (as a number) or value")

    @field_validator("label")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("label must be a finite number")
        return value


class FeedbackAccepted(BaseModel):
    accepted: int


@router.post("/feedback", status_code=202, response_model=FeedbackAccepted)
async def feedback(
    items: Annotated[Feedback | list[Feedback], Body(description="one label or a list of labels")], state: State
) -> FeedbackAccepted:
    """Queue labels for the feedback table."""
    batch = items if isinstance(items, list) else [items]
    if not batch:
        raise HTTPException(422, "expected at least one label, got an empty list")
    if state.log is None:
        raise HTTPException(
            503, "feedback needs the inference log: start the server with SELFHEAL_INFERENCE_LOG=true and a lake root"
        )
    if not state.record_feedback([f.request_id for f in batch], [f.label for f in batch]):
        raise HTTPException(503, "the log queue is full (the lake is slow or down); retry in a few seconds")
    return FeedbackAccepted(accepted=len(batch))
