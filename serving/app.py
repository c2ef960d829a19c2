"""The FastAPI application of the model server.

``create_app()`` only builds routes (cheap, no threads), so gunicorn can import it
once in its master (``preload_app``) and fork the workers; each worker then
loads its models and starts its threads in the lifespan.

Example:
    >>> app = create_app(ServerSettings(model_name="fraud-detector"))
    >>> # uvicorn serving.app:create_app --factory   (one process), or `python -m serving` (several)
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import startup
from serving.limits import BodyLimitMiddleware, http_error, validation_error
from serving.routers import admin, feedback, predict, probes
from serving.settings import ServerSettings, forbid_pickle
from serving.state import ServingState

logger = logging.getLogger(__name__)

_KNOWN_PATHS = frozenset({"/predict", "/feedback", "/health", "/ready", "/metrics", "/admin/reload", "/admin/rollback"})


class _MetricsMiddleware:
    """Counts every HTTP answer and its latency by route (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state: ServingState | None = getattr(scope["app"].state, "serving", None)
            if state is not None:
                path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
                state.metrics.http_latency.labels(path).observe(time.perf_counter() - started)
                state.metrics.http_requests.labels(path, str(status)).inc()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServerSettings = app.state.settings
    startup.mark_worker()
    state = ServingState(settings)
    await asyncio.to_thread(state.start)
    primary, fallback = state.watcher.models.versions()
    startup.log_profile(f"worker {state.pid} serving version {primary} (fallback {fallback})")
    state.start_batcher()
    state.load_models_in_background()
    app.state.serving = state
    try:
        yield
    finally:
        await state.stop()


def _openapi_with_model(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the loaded model's record schema in ``/predict``'s body.

    ``/feedback``'s label lists the labels the server accepts now (see ``serving.routers.feedback``).
    """
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    document = copy.deepcopy(app.openapi_schema)
    state: ServingState | None = getattr(app.state, "serving", None)
    schema = state.watcher.models.schema if state is not None else None
    record = schema.record_schema() if schema is not None else {"type": "object"}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Record"] = record
    feedback.describe_body(document, state)
    return document


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The model server's app; settings default to the ``SELFHEAL_*`` environment."""
    # Whatever its environment says: MLflow's loaders must not unpickle in a server (see serving.modelio).
    forbid_pickle()
    settings = settings or ServerSettings()
    app = FastAPI(
        title="selfheal model server",
        version="1",
        summary="Predictions with a circuit breaker, fallback, hot reload and an inference log",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(predict.PredictFastPath)  # innermost: inside the body limit and the metrics
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)  # inside the metrics: 413s are counted
    app.add_middleware(_MetricsMiddleware)
    app.include_router(predict.router)
    app.include_router(feedback.router)
    app.include_router(probes.router)
    app.include_router(admin.router)
    app.openapi = lambda: _openapi_with_model(app)  # type: ignore[method-assign]
    return app
