"""``POST /predict``: one record or a list, validated against the model's signature.

The body is parsed with orjson and validated by ``FeatureSchema`` in one pass
(not by a pydantic model: the fields are only known once a model is loaded, and
this is the hot path). Each answer says which version answered and who
(``primary``, ``fallback`` or ``baseline``), and carries a request id (the
``X-Request-ID`` header when the client sent a usable one). Rows of a list get
ids ``<request id>:<index>``: those are the ids ``POST /feedback`` takes.

FastAPI's router, dependency solving and response handling cost a third of a worker's
time on this route (py-spy under wrk). So ``PredictFastPath``, a plain ASGI middleware,
answers ``POST /predict`` itself by calling the same ``predict`` function; the route
stays registered for the OpenAPI document and for every other method (405).

While a canary release routes traffic, the request id decides (by hash, see
``serving.release``) whether the challenger answers; ``variant`` in the answer
says which arm the request was routed to (``champion`` or ``challenger``).
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from checkpoints.exceptions import ServingUnavailable
from serving.batching import PendingRequest
from serving.limits import http_error
from serving.release import Variant, routes_to_challenger
from serving.routers.deps import state_of
from serving.schema import RequestInvalid

router = APIRouter(tags=["predictions"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

#: Replaced at run time by the loaded model's record schema (see ``serving.app``).
RECORD_SCHEMA_REF = "#/components/schemas/Record"
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": RECORD_SCHEMA_REF},
                    {"type": "array", "items": {"$ref": RECORD_SCHEMA_REF}, "minItems": 1},
                    {
                        "type": "object",
                        "properties": {
                            "dataframe_records": {"type": "array", "items": {"$ref": RECORD_SCHEMA_REF}, "minItems": 1}
                        },
                        "required": ["dataframe_records"],
                        "additionalProperties": False,
                    },
                ]
            }
        }
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Predictions, with the version and who answered",
        "content": {
            "application/json": {
                "example": {
                    "request_id": "5f0c...",
                    "model_version": "7",
                    "served_by": "primary",
                    "variant": "champion",
                    "predictions": [1],
                    "scores": [0.93],
                    "ids": ["5f0c..."],
                }
            }
        },
    },
    413: {"description": "Body too large (SELFHEAL_MAX_BODY_BYTES)"},
    422: {"description": "A field is missing or has the wrong type; `detail` names it and the expected type"},
    503: {"description": "No model is loaded yet"},
}


class _RequestIds:
    """Unique ids without a system call per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():  # a forked worker must not reuse its parent's prefix
            self._pid = os.getpid()
            self._prefix = uuid.uuid4().hex[:16]
        return f"{self._prefix}{next(self._counter):08x}"


_ids = _RequestIds()


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return _ids.next()


@router.post(
    "/predict",
    summary="Predict one record or a list of records",
    openapi_extra={"requestBody": REQUEST_BODY},
    responses=RESPONSES,
)
async def predict(request: Request) -> Response:
    """Validate the body against the model signature and answer from the primary, fallback or baseline."""
    started, received_us = time.perf_counter(), time.time_ns() // 1000
    state = state_of(request)  # not a Depends: 6,200 -> 7,150 req/s at 16 connections (A/B, session 23)
    body = await request.body()  # at most SELFHEAL_MAX_BODY_BYTES (serving.limits)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(
            422, [{"loc": ["body"], "msg": f"body is not valid JSON: {exc}", "type": "json_invalid"}]
        ) from None
    models = state.watcher.models
    schema = models.schema
    if schema is None or state.batcher is None:
        state.metrics.unavailable.inc()
        raise HTTPException(
            503,
            f"no model is loaded yet: this worker is waiting for @{state.settings.champion_alias} of "
            f"{state.settings.model_name!r} (see GET /ready for the last error)",
        )
    try:
        columns, rows, single = schema.validate(payload, max_rows=state.settings.max_request_rows)
    except RequestInvalid as exc:
        raise HTTPException(422, exc.errors) from None
    request_id = _request_id(request)
    row_ids = [request_id] if single else [f"{request_id}:{i}" for i in range(rows)]
    release = models.routing
    variant: Variant = "champion"
    if release is not None and release.mode == "canary" and routes_to_challenger(request_id, release.share):
        variant = "challenger"
    pending = PendingRequest(
        models, columns, rows, row_ids, received_us=received_us, started=started, variant=variant, request_id=request_id
    )
    try:
        answer = await state.batcher.submit(pending)
    except ServingUnavailable as exc:
        state.metrics.unavailable.inc()
        raise HTTPException(503, str(exc)) from None
    outcome = answer.outcome
    content = orjson.dumps(
        {
            "request_id": request_id,
            "model_version": outcome.model_version,
            "served_by": outcome.served_by,
            "variant": outcome.variant,
            "predictions": answer.labels(),
            "scores": answer.scores(),
            "ids": row_ids,
        }
    )
    return Response(content, media_type="application/json", headers={"x-request-id": request_id})


class PredictFastPath:
    """``POST /predict`` answered by ``predict`` without FastAPI's router (see the module docstring).

    It sits inside the body limit and the metrics middlewares, so a 413 and the request
    counters are what they are on any route; an ``HTTPException`` is rendered by the app's
    own handler (``serving.limits.http_error``), so the errors are the same to the byte.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await predict(request)
        except StarletteHTTPException as exc:
            response = await http_error(request, exc)
        await response(scope, receive, send)
