"""Network probes: the state of a namespace link, and the time until a target behind it is reachable."""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import socket
from typing import Any

from chaoslib.types import Configuration

from chaos._polling import Check, seconds_until
from chaos.network import _link

__all__ = ["link_status", "seconds_until_reachable"]


def link_status(namespace: str) -> dict[str, Any]:
    """Whether the namespace link exists, whether its namespace end is up, and the root qdisc on each end.

    A clean link reads ``{"exists": true, "up": true, "shaped": false, ...}``.
    """
    _link.require_root()
    link = _link.Link(namespace)
    if not _link.exists(link):
        return {"namespace": namespace, "exists": False, "up": False, "shaped": False, "qdiscs": {}}
    qdiscs = _link.qdiscs(link)
    shaped = any(kind in ("tbf", "htb") for kind in qdiscs.values())
    return {"namespace": namespace, "exists": True, "up": _link.is_up(link), "shaped": shaped, "qdiscs": qdiscs}


def seconds_until_reachable(
    host: str,
    port: int,
    timeout: float = 30.0,
    since: str = "restore",
    interval: float = 0.25,
    configuration: Configuration | None = None,
) -> float:
    """Poll until a TCP connection to host:port succeeds; return the seconds from the clock start.

    The clock starts at the last ``restore`` of this run by default (the link came back).
    """

    def look() -> Check:
        try:
            with socket.create_connection((host, port), timeout=min(1.0, max(0.1, interval * 2))):
                return Check(True, f"connected to {host}:{port}")
        except OSError as exc:
            return Check(False, f"{host}:{port}: {exc}")

    return seconds_until(look, f"{host}:{port} reachable", timeout, since, interval, configuration)
