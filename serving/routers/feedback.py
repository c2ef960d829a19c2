"""``POST /feedback``: ground-truth labels, by request id, into the ``feedback`` table.

Labels arrive late (hours or days after the prediction); they are joined with
the inference log on ``feedback.request_id == inference_log._request_id``. They
go through the same batched writer as predictions (so the answer is 202: queued,
written within the flush interval, spilled to the dead-letter folder if the
lake refuses them).

A label must be one the model can have given: one of ``data.label_values``
(``SELFHEAL_LABEL_VALUES``), else one of the loaded classifier's classes, else
(a regressor) any finite number. Anything else is a 422 naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.limits import json_safe
from serving.routers.deps import State
from serving.state import ServingState

router = APIRouter(tags=["feedback"])

#: The ids ``/predict`` hands out: its request ids (``X-Request-ID`` or generated), ``:<index>`` for list rows.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,160}$"
_MAX_ERRORS = 20


class Feedback(BaseModel):
    """One ground-truth label."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="an id from a /predict answer (`ids`)")
    label: float = Field(strict=True, description="the true class (as a number) or value")

    @field_validator("label")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("label must be a finite number")
        return value


class FeedbackAccepted(BaseModel):
    accepted: int


RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body too large (SELFHEAL_MAX_BODY_BYTES)"},
    422: {"description": "A field is missing, has the wrong type, or a label the model cannot have given"},
    503: {"description": "No inference log, or its queue is full (the lake is slow or down): retry"},
}


def allowed_labels(state: ServingState) -> list[float] | None:
    """The labels ``/feedback`` accepts now, sorted; None: any finite number (a regression task)."""
    settings = state.settings
    if settings.label_values is not None:
        values = settings.label_values
        if all(isinstance(v, (int, float)) for v in values):
            return sorted({float(v) for v in values})
        return [float(i) for i in range(len(values))]  # class names: the log stores their index
    if settings.task == "regression":
        return None
    model = state.watcher.models.primary or state.watcher.models.fallback
    if model is None or model.classes is None:
        return None
    classes = model.classes_list()
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return sorted(float(c) for c in classes)
    return [float(i) for i in range(len(classes))]


def describe_body(document: dict[str, Any], state: ServingState | None) -> None:
    """Put what this server accepts now (labels, labels per request) into its OpenAPI ``document``."""
    record = Feedback.model_json_schema()
    labels = allowed_labels(state) if state is not None else None
    if labels is not None:
        record["properties"]["label"]["enum"] = labels
    document.setdefault("components", {}).setdefault("schemas", {})["Feedback"] = record
    if state is None:
        return
    body = document["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for option in body.get("anyOf", []):
        if option.get("type") == "array":
            option["maxItems"] = state.settings.feedback_limit


def _check_labels(batch: list[Feedback], allowed: list[float] | None, single: bool) -> None:
    if allowed is None:
        return
    accepted = set(allowed)
    shown = ", ".join(f"{v:g}" for v in allowed[:20]) + (", ..." if len(allowed) > 20 else "")
    errors = [
        {
            "loc": ["body", "label"] if single else ["body", index, "label"],
            "msg": f"label {item.label:g} is not one the model can have given; expected one of {shown}",
            "type": "label_value",
        }
        for index, item in enumerate(batch)
        if item.label not in accepted
    ]
    if errors:
        raise HTTPException(422, errors[:_MAX_ERRORS])


REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "one label or a non-empty list of labels",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Feedback"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Feedback"}, "minItems": 1},
                ]
            }
        }
    },
}


def _parse(body: bytes, limit: int) -> tuple[list[Feedback], bool]:
    """The labels of a body and whether it was one label; the list's length is checked before its items.

    Raises:
        HTTPException: 422 naming the body, the item and the field that is wrong.
    """
    try:
        # The standard parser keeps NaN and Infinity, so the error names the field that holds them.
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HTTPException(422, [_error(["body"], f"body is not valid JSON: {reason}", "json_invalid")]) from None
    single = not isinstance(payload, list)
    items = [payload] if single else payload
    if not items or len(items) > limit:
        msg = f"expected one label or a list of 1 to {limit} labels, got {len(items)}; split the request"
        raise HTTPException(422, [_error(["body"], msg, "too_short" if not items else "too_long")])
    batch: list[Feedback] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        prefix: list[Any] = ["body"] if single else ["body", index]
        try:
            batch.append(Feedback.model_validate(item))
        except ValidationError as exc:
            errors += [_error(prefix + list(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]
            if len(errors) >= _MAX_ERRORS:
                break
    if errors:
        raise HTTPException(422, errors[:_MAX_ERRORS])
    return batch, single


def _error(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": [json_safe(part) for part in loc], "msg": msg, "type": kind}


@router.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def feedback(request: Request, state: State) -> FeedbackAccepted:
    """Queue labels for the feedback table."""
    # Parsed here rather than by FastAPI: the list's length is checked before 10,000s of items are
    # validated on the event loop (which would stall this worker's heartbeat).
    batch, single = _parse(await request.body(), state.settings.feedback_limit)
    _check_labels(batch, allowed_labels(state), single)
    if state.log is None:
        raise HTTPException(
            503, "feedback needs the inference log: start the server with SELFHEAL_INFERENCE_LOG=true and a lake root"
        )
    if not state.record_feedback([f.request_id for f in batch], [f.label for f in batch]):
        raise HTTPException(503, "the log queue is full (the lake is slow or down); retry in a few seconds")
    return FeedbackAccepted(accepted=len(batch))
