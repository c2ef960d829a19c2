"""``POST /admin/reload`` and ``POST /admin/rollback``, behind a bearer token.

The token is ``SELFHEAL_ADMIN_TOKEN``, compared in constant time; without it the
endpoints answer 401, and when the variable is unset they are disabled (404).
An action taken on one worker reaches the others through the control file (see
``serving.reload``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from checkpoints.exceptions import RegistryUnavailable
from serving.reload import ReloadReport, RollbackImpossible
from serving.routers.deps import State

_UNAUTHORIZED = "missing or wrong admin token: send 'Authorization: Bearer <SELFHEAL_ADMIN_TOKEN>'"


async def require_admin(request: Request, state: State) -> None:
    """Let the request through only with the right bearer token."""
    token = state.settings.admin_token
    if token is None:
        raise HTTPException(404, "admin endpoints are disabled: start the server with SELFHEAL_ADMIN_TOKEN set")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(401, _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token"},
    404: {"description": "Admin endpoints are disabled (SELFHEAL_ADMIN_TOKEN unset)"},
    409: {"description": "The version could not be loaded; the old one keeps serving"},
    413: {"description": "Body too large (SELFHEAL_MAX_BODY_BYTES)"},
    422: {"description": "The body is not a rollback request; `detail` names the field"},
    502: {"description": "The model registry cannot be reached"},
}


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        default=None, pattern=r"^[0-9]{1,18}$", description="version to serve; default: the loaded @previous"
    )


def _answer(report: ReloadReport) -> dict[str, Any]:
    if report.failed:
        raise HTTPException(409, f"{'; '.join(report.errors)}; still serving version {report.primary}")
    return {
        "model_version": report.primary,
        "fallback_version": report.fallback,
        "changed": report.changed,
        "pinned": None if report.pin is None else report.pin.__dict__,
        "warnings": list(report.errors),
    }


@router.post("/reload", responses=_RESPONSES, summary="Load @champion now on every worker (clears a rollback)")
async def reload(state: State) -> dict[str, Any]:
    try:
        report = await asyncio.to_thread(state.watcher.reload)
    except RegistryUnavailable as exc:
        raise HTTPException(502, str(exc)) from None
    return _answer(report)


@router.post("/rollback", responses=_RESPONSES, summary="Serve @previous (or a named version) on every worker")
async def rollback(state: State, body: Annotated[RollbackRequest | None, Body()] = None) -> dict[str, Any]:
    version = body.version if body is not None else None
    try:
        report = await asyncio.to_thread(state.watcher.rollback, version)
    except RollbackImpossible as exc:
        raise HTTPException(409, str(exc)) from None
    except RegistryUnavailable as exc:
        raise HTTPException(502, str(exc)) from None
    return _answer(report)
