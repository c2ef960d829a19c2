"""Network faults with real kernel mechanisms: a veth into a namespace, ``tc`` to throttle, link down to cut.

The experiment creates the namespace (``create_link``, or the ``chaos.network.control``
control before its steady-state hypothesis), puts the target behind it
(``start_in_namespace``: the model server or the tracking server), then throttles or
cuts the link and restores it. Everything needs root; without it every action fails
with that reason. Only addresses inside the namespace are ever contacted.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
from typing import Any

from chaoslib.types import Configuration

from chaos import ledger
from chaos.network import _link
from chaos.serving import _server

__all__ = [
    "create_link",
    "cut_link",
    "remove_link",
    "restore_link",
    "start_in_namespace",
    "throttle_link",
]

logger = logging.getLogger(__name__)


def create_link(
    namespace: str,
    host_address: str = "10.231.0.1/30",
    namespace_address: str = "10.231.0.2/30",
) -> dict[str, Any]:
    """Create a network namespace joined to this host by a veth pair, with one address on each end.

    A blackhole route for the subnet guards against traffic leaving the machine if the
    host end ever goes down. Fails if the namespace already exists.
    """
    _link.require_root()
    link = _link.Link(namespace)
    if _link.exists(link):
        raise ValueError(f"network namespace {namespace!r} already exists; remove it first (remove_link)")
    _link.create(link, host_address, namespace_address)
    logger.info("created namespace %s: %s <-> %s", namespace, host_address, namespace_address)
    return {
        "namespace": namespace,
        "host_interface": link.host_interface,
        "namespace_interface": link.namespace_interface,
        "host_address": host_address,
        "namespace_address": namespace_address,
    }


def start_in_namespace(
    namespace: str,
    command: list[str],
    cwd: str = ".",
    log_file: str | None = None,
    env: dict[str, str] | None = None,
    ready_url: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Start a command inside the namespace (``ip netns exec``), detached, and wait until the ready URL answers 200.

    ``env`` adds variables to this process's environment. The process is stopped by ``remove_link``.
    """
    _link.require_root()
    link = _link.Link(namespace)
    if not _link.exists(link):
        raise ValueError(f"network namespace {namespace!r} does not exist; create it first (create_link)")
    argv = ["ip", "netns", "exec", namespace, *_server.resolve_command(command)]
    proc = _server.start_detached(argv, cwd, log_file, env={**os.environ, **(env or {})})
    seconds = _server.wait_http_ok(ready_url, proc, timeout) if ready_url else None
    logger.info("started %s in %s (pid %d)", command[0], namespace, proc.pid)
    return {"pid": proc.pid, "ready_seconds": seconds}


def throttle_link(
    namespace: str,
    rate: str = "256kbit",
    burst: str = "16kbit",
    latency: str = "200ms",
    qdisc: str = "tbf",
    direction: str = "both",
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Limit the bandwidth of the link into the namespace with a tc token bucket (tbf) or an htb class.

    ``direction``: ``both`` (default), ``to_namespace`` (requests) or ``from_namespace`` (answers).
    Undo with ``restore_link``.
    """
    _link.require_root()
    link = _link.Link(namespace)
    _link.shape(link, qdisc, rate, burst, latency, direction)
    detail = {"rate": rate, "burst": burst, "latency": latency, "qdisc": qdisc, "direction": direction}
    at = ledger.record(configuration, "fault", fault="throttle_link", detail={"namespace": namespace, **detail})
    logger.info("throttled %s: %s", namespace, detail)
    return {**detail, "namespace": namespace, "qdiscs": _link.qdiscs(link), "at": at}


def cut_link(namespace: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Cut the link: take the namespace end of the veth down, so nothing gets through either way.

    Undo with ``restore_link``.
    """
    _link.require_root()
    link = _link.Link(namespace)
    _link.set_namespace_end(link, up=False)
    at = ledger.record(configuration, "fault", fault="cut_link", detail={"namespace": namespace})
    logger.info("cut the link into %s", namespace)
    return {"namespace": namespace, "up": _link.is_up(link), "at": at}


def restore_link(namespace: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Undo throttle_link and cut_link: remove the shaping qdiscs and bring the namespace end up.

    A no-op when the link is already clean; fails only if the namespace is gone.
    """
    _link.require_root()
    link = _link.Link(namespace)
    if not _link.exists(link):
        raise ValueError(f"network namespace {namespace!r} does not exist")
    _link.unshape(link)
    _link.set_namespace_end(link, up=True)
    at = ledger.record(configuration, "restore", fault="restore_link", detail={"namespace": namespace})
    logger.info("restored the link into %s", namespace)
    return {"namespace": namespace, "up": _link.is_up(link), "qdiscs": _link.qdiscs(link), "at": at}


def remove_link(namespace: str) -> dict[str, Any]:
    """Stop every process in the namespace (SIGTERM, then SIGKILL), delete the veth pair and the namespace.

    Safe to call twice; a namespace that does not exist is not an error.
    """
    _link.require_root()
    link = _link.Link(namespace)
    stopped = _link.remove(link)
    logger.info("removed namespace %s (stopped %s)", namespace, stopped)
    return {"namespace": namespace, "stopped": stopped, "removed": not _link.exists(link)}
