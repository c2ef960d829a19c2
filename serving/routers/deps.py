"""Shared dependencies of the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.state import ServingState


async def get_state(request: Request) -> ServingState:
    """The worker's serving state (built by the app's lifespan)."""
    state: ServingState | None = getattr(request.app.state, "serving", None)
    if state is None:
        raise HTTPException(503, "the server is still starting; retry in a moment")
    return state


State = Annotated[ServingState, Depends(get_state)]
