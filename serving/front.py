"""An HAProxy in front of the replicas that retries a request whose worker died under it.

Without it, SIGKILL of one worker fails the requests in flight on its connections
(the client sees the connection close before an answer: wrk counts read errors). With
``--front haproxy`` the supervisor gives the public port to HAProxy (``bind fd@3``,
the socket the supervisor holds) and the gunicorn masters a Unix socket in the runtime
folder; HAProxy sends every request over it and sends it again when the connection
closes before any answer (``retry-on conn-failure empty-response``). A prediction is
idempotent, so the retry is safe; a request that got a partial answer is not retried.

HAProxy comes from the Debian package (``deployments/install-test-deps.sh``).

Example:
    >>> argv = front_command("haproxy", Path("run"), Path("run/app.sock"))
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Fronts ``--front`` knows (``none``: clients reach the masters' socket directly).
FRONTS = ("none", "haproxy")

_CONFIG = """\
# Written by serving.front for one `python -m serving --front haproxy`; rewritten at each start.
global
    maxconn 4096
    nbthread 1

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 5s
    # A worker killed mid-request closes the connection before any answer: send it again
    # (on a new connection; the socket's queue hands it to a live worker).
    retries 3
    retry-on conn-failure empty-response
    # ...which it can only do with the whole request at hand: wait for the body before sending it
    # (a client that sends the headers and the body apart would otherwise not be retried).
    option http-buffer-request

frontend serve
    bind fd@3
    default_backend replicas

backend replicas
    server app unix@{socket}
"""


def front_command(front: str, runtime: Path, app_socket: Path) -> list[str]:
    """The front's command (HAProxy in the foreground), its config written into ``runtime``.

    Raises:
        ValueError: an unknown front, or HAProxy is not installed.
    """
    if front != "haproxy":
        raise ValueError(f"unknown front {front!r} (one of {', '.join(FRONTS)})")
    binary = shutil.which("haproxy")
    if binary is None:
        raise ValueError("--front haproxy: no haproxy on PATH (Debian: apt-get install haproxy)")
    config = runtime / "haproxy.cfg"
    config.write_text(_CONFIG.format(socket=app_socket))
    return [binary, "-db", "-f", str(config)]
