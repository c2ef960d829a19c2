"""An HAProxy in front of the replicas that retries a request whose worker died under it.

Without it, SIGKILL of one worker fails the requests in flight on its connections
(the client sees the connection close before an answer: wrk counts read errors). With
``--front haproxy`` the supervisor gives the public port to HAProxy (``bind fd@3``,
the socket the supervisor holds) and each gunicorn master a Unix socket of its own in
the runtime folder; HAProxy balances the requests over them (``leastconn``) and sends one
again, to another replica, when the connection closes before any answer (``retry-on
conn-failure empty-response``, ``option redispatch``). A prediction is idempotent, so
the retry is safe; a request that got a partial answer is not retried.

A replica whose worker is gone (killed, restarting, its master in backoff) still accepts
on its socket, which the supervisor holds: requests sent there wait until it is back,
and no retry sees them. HAProxy health checks would steer new requests away, but on this
2-core VM under load they failed healthy replicas (1-s checks: every server marked down
and HAProxy answering 503), so there are none; ``leastconn`` sends fewer requests to the
replica whose requests are stuck.

One socket per replica, not one for all: HAProxy keeps its connections to the replicas
open, and on one shared socket the kernel may hand all of them to one worker (18.1
against 0.1 CPU s in a 15-s run at 16 connections; the other worker idled).

HAProxy comes from the Debian package (``deployments/install-test-deps.sh``).

Example:
    >>> argv = front_command("haproxy", Path("run"), [Path("run/app-1.sock"), Path("run/app-2.sock")])
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
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
    # ...to another replica each time: the one that failed may be restarting.
    option redispatch 1
    # ...which it can only do with the whole request at hand: wait for the body before sending it
    # (a client that sends the headers and the body apart would otherwise not be retried).
    option http-buffer-request

frontend serve
    bind fd@3
    default_backend replicas

backend replicas
    balance leastconn
{servers}
"""


def front_command(front: str, runtime: Path, app_sockets: Sequence[Path]) -> list[str]:
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
    servers = "\n".join(f"    server replica-{i} unix@{path}" for i, path in enumerate(app_sockets, 1))
    config.write_text(_CONFIG.format(servers=servers))
    return [binary, "-db", "-f", str(config)]
