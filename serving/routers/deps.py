"""Shared dependencies of the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.state import ServingState


def state_of(request: Request) -> ServingState:
    """The worker's serving state (built by the app's lifespan); 503 while it is being built."""
    state: ServingState | None = getattr(request.app.state, "serving", None)
    if state is None:
        raise HTTPException(503, "the server is still starting; retry in a moment")
    return state


async def get_state(request: Request) -> ServingState:
    """``state_of`` as a FastAPI dependency (``State``)."""
    return state_of(request)


State = Annotated[ServingState, Depends(get_state)]
