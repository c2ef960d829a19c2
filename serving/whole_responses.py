"""A response leaves the worker in one write: a worker killed mid-answer leaves nothing half-sent.

uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and its body in a second write when the app sends
``http.response.body``. Between the two, the message passes back through every ASGI
middleware of the app (tens of microseconds, at thousands of answers a second a few
percent of a busy worker's time). A worker SIGKILLed in that gap leaves headers
without a body on the connection. A client sees the connection close mid-answer, and
HAProxy (``serving.front``) cannot send the request again: it retries a request whose
server failed *before* answering (``retry-on conn-failure empty-response``), never one
whose answer it started to forward. Measured: behind the front, 3 worker kills under
8 clients lost a request in 2 of 3 runs once answers got fast enough.

``WholeResponseProtocol`` is uvicorn's httptools protocol with a connection's head held
until its body is written, and both sent as one ``send`` (the app sends the two
messages without waiting on anything in between). The kernel takes such a write whole
or not at all. So a killed worker has either answered or left the connection empty,
and the front retries the empty one. A write that nothing follows goes out at the event
loop's next turn, and a close sends what is held first. Holding every write to the next
turn instead cost 20% of the throughput at 16 connections: each answer waited a turn.

Example (the server's gunicorn worker class, ``serving.server``)::

    worker_class = "serving.whole_responses.WholeResponseWorker"
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class WholeWrites:
    """A transport that holds a write until the next one and sends both as one; all else is the transport's.

    uvicorn writes an answer as its head, then its body, without waiting in between: the
    body's write sends both at once. A write nothing follows (a head whose body comes later,
    the last piece of a stream) goes out at the event loop's next turn, or on a close.
    """

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:  # asyncio's or uvloop's
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.send_held)
            return
        whole, self._held = self._held + bytes(data), None
        if not self._transport.is_closing():
            self._transport.write(whole)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def send_held(self) -> None:
        """Write what is held now (a write nothing followed: the event loop calls it at its next turn)."""
        if self._held is None:
            return
        data, self._held = self._held, None
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.send_held()
        self._transport.close()

    def write_eof(self) -> None:
        self.send_held()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WholeResponseProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each event-loop turn's bytes at once (see the module docstring)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(WholeWrites(transport, self.loop))  # type: ignore[arg-type]


class WholeResponseWorker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's uvicorn worker with ``WholeResponseProtocol``."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "http": WholeResponseProtocol}
