"""uvicorn's protocol, as the server runs it, writes each answer in one piece."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving.whole_responses import WholeResponseProtocol


class RecordingTransport(asyncio.Transport):
    """What a socket would be sent, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers as the server's routes do: the start, then the whole body, passing through a middleware."""
    assert scope["type"] == "http"

    async def middleware_send(message: dict[str, Any]) -> None:  # a wrapper, as the app's middlewares are
        await send(message)

    await middleware_send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await middleware_send({"type": "http.response.body", "body": b"{}"})


async def _answer(protocol_class: type[HttpToolsProtocol], request: bytes) -> RecordingTransport:
    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config, ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):  # the app's task, then the held write
        await asyncio.sleep(0)
    return transport


KEEP_ALIVE = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the server's workers run uvloop
@pytest.mark.parametrize("request_bytes", [KEEP_ALIVE, CLOSE], ids=["keep-alive", "connection-close"])
def test_an_answer_goes_out_in_one_write(request_bytes: bytes, loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        transport = runner.run(_answer(WholeResponseProtocol, request_bytes))
    assert len(transport.writes) == 1, transport.writes
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(b"\r\n\r\n{}")
    assert transport.closed == (request_bytes == CLOSE)  # a close sent what was held first (else: written after close)


def test_uvicorn_alone_writes_the_headers_and_the_body_apart() -> None:
    """The gap this protocol closes: without it the same answer is two writes."""
    transport = asyncio.run(_answer(HttpToolsProtocol, KEEP_ALIVE))
    assert len(transport.writes) == 2 and transport.writes[1] == b"{}"
