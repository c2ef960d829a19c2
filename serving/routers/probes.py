"""``GET /health`` (the process answers), ``GET /ready`` (a model is loaded), ``GET /metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.release import ShadowMirror
from serving.reload import ModelSet
from serving.routers.deps import State

router = APIRouter(tags=["probes"])


@router.get("/health", summary="Liveness: the worker process answers")
async def health(request: Request) -> dict[str, Any]:
    state = getattr(request.app.state, "serving", None)
    return {"status": "ok", "pid": state.pid if state is not None else None}


@router.get("/ready", summary="Readiness: a model is loaded", responses={503: {"description": "No model loaded yet"}})
async def ready(state: State) -> JSONResponse:
    models = state.watcher.models
    primary, fallback = models.versions()
    body: dict[str, Any] = {
        "status": "ready" if models.ready else "not ready",
        "model_name": state.settings.model_name,
        "model_version": primary,
        "fallback_version": fallback,
        "baseline": None
        if models.baseline is None
        else {"version": models.baseline.version, "source": models.baseline.source},
        "pinned": None if models.pin is None else models.pin.__dict__,
        "release": _release(models, state.shadow),
        "breaker": state.predictor.breaker.state,
        "last_reload_error": state.watcher.last_error,
        # The champion this server will not load, and why (the old one keeps serving): the healer's evidence.
        "refused": state.watcher.refused,
        "log_queue_rows": state.log.pending_rows if state.log is not None else None,
        "pid": state.pid,
    }
    if not models.ready:
        body["detail"] = (
            f"no model loaded: waiting for @{state.settings.champion_alias} of {state.settings.model_name!r} "
            f"in the registry ({state.settings.tracking_uri or 'default tracking URI'})"
        )
    return JSONResponse(body, status_code=200 if models.ready else 503)


def _release(models: ModelSet, shadow: ShadowMirror) -> dict[str, Any] | None:
    """The release this worker routes now (None: the champion answers everything), with its shadow's row counts."""
    release = models.routing
    if release is None:
        return None
    body: dict[str, Any] = {
        "mode": release.mode,
        "challenger": release.challenger,
        "share": release.share,
        "id": release.release_id,
    }
    if release.mode == "shadow":
        body["mirrored_rows"] = {"predicted": shadow.predicted, "dropped": shadow.dropped}
    return body


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get(
    "/metrics", summary="Prometheus metrics (all workers)", response_class=Response, responses=_METRICS_RESPONSES
)
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
