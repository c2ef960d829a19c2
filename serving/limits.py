"""What the server answers to input it cannot take: bodies over the size limit, and invalid bodies.

``BodyLimitMiddleware`` caps every request body at ``SELFHEAL_MAX_BODY_BYTES``
while it is read: a declared ``Content-Length`` over the limit is refused before
a byte is read, and a chunked body is counted as it arrives and cut off at the
limit, so a worker never holds more than the limit of one body in memory.
``validation_error`` renders FastAPI's 422 without echoing the input (a NaN, an
infinity or a lone surrogate in it cannot be written as JSON: that was a 500), and
``http_error`` turns FastAPI's bare 400 for a body it could not decode (bytes that
are not UTF-8, nesting deeper than Python's recursion limit) into the same 422 a
body that is not JSON gets, naming the body and the reason.

Example:
    >>> app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    >>> app.add_exception_handler(RequestValidationError, validation_error)
    >>> app.add_exception_handler(StarletteHTTPException, http_error)
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The setting that sets the limit, named in every 413 so an operator knows what to raise.
LIMIT_SETTING = "SELFHEAL_MAX_BODY_BYTES"


class BodyTooLarge(HTTPException):
    """A request body went over the limit (an ``HTTPException``, so FastAPI's body reader lets it through)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        said = f"body is {size} bytes" if size is not None else "body exceeds the limit"
        super().__init__(413, f"{said}; the limit is {limit} bytes ({LIMIT_SETTING})")
        self.limit = limit


def _json(status: int, detail: Any) -> Response:
    return Response(
        json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False).encode(),
        status_code=status,
        media_type="application/json",
    )


class BodyLimitMiddleware:
    """Refuse (413, JSON) any request whose body is larger than ``limit`` bytes, counting while it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            # Answered before reading: the server closes the connection rather than drain the rest.
            await _json(413, BodyTooLarge(self.limit, declared).detail)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # read outside a route (FastAPI's own handler answers inside one)
            if started:
                raise
            await _json(413, exc.detail)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def json_safe(value: Any) -> Any:
    """A location part as JSON can carry it (a field name may hold a lone surrogate)."""
    if isinstance(value, int):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 (``loc``, ``msg``, ``type`` per error), without the input it could not render."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [json_safe(part) for part in error.get("loc", ())],
            "msg": json_safe(error.get("msg", "")),
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    return _json(422, errors)


#: FastAPI's detail when decoding a JSON body raised anything but ``JSONDecodeError``.
_UNDECODABLE = "There was an error parsing the body"


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer to an ``HTTPException``, except a body it could not decode: a 422 naming why."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNDECODABLE and exc.__cause__ is not None:
        reason = type(exc.__cause__).__name__
        if isinstance(exc.__cause__, RecursionError):
            reason = "nested too deeply"
        elif isinstance(exc.__cause__, UnicodeDecodeError):
            reason = "not UTF-8 text"
        return _json(422, [{"loc": ["body"], "msg": f"body is not valid JSON: {reason}", "type": "json_invalid"}])
    return await http_exception_handler(request, exc)
