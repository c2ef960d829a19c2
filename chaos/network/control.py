"""A Chaos Toolkit control that puts a target behind a namespace link for one experiment.

The steady-state hypothesis runs before the method, so the target must exist before
it: this control creates the link and starts the target when the experiment starts,
and removes both when it ends, whatever happened in between (``cleanup_control``
runs even when the experiment was interrupted). Declared in an experiment::

    controls:
      - name: serving-behind-a-link
        provider:
          type: python
          module: chaos.network.control
          arguments:
            namespace: shc-serve
            host_address: 10.231.0.1/30
            namespace_address: 10.231.0.2/30
            command: [selfheal, -c, "${sandbox}/selfheal.yaml", serve, --host, 10.231.0.2]
            ready_url: http://10.231.0.2:8765/ready

``host_command`` optionally starts a second process on the host after the target is
ready (a model server whose tracking store is the target, say); it is stopped too.
``workload`` (``{url, source, log}``) starts clients (``chaos.workload``, no feedback)
that keep calling the server behind the link for the whole experiment, so availability
and latency are measured continuously over the fault, outage included.
Without root the control interrupts the experiment with that reason.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from chaoslib.exceptions import ActivityFailed, InterruptExecution

from chaos.network import _link
from chaos.serving import _server
from serving import processes

logger = logging.getLogger(__name__)

#: Links and host processes this process set up, removed at the end of the experiment.
_started_links: list[str] = []
_started_hosts: list[subprocess.Popen[bytes]] = []


def before_experiment_control(
    context: Any,
    namespace: str,
    command: list[str],
    host_address: str = "10.231.0.1/30",
    namespace_address: str = "10.231.0.2/30",
    ready_url: str | None = None,
    cwd: str = ".",
    log_file: str | None = None,
    env: dict[str, str] | None = None,
    host_command: list[str] | None = None,
    host_ready_url: str | None = None,
    host_log_file: str | None = None,
    host_env: dict[str, str] | None = None,
    workload: dict[str, str] | None = None,
    timeout: float = 120.0,
    **kwargs: Any,
) -> None:
    """Create the link, start the target in it (and the host-side process), wait until they answer."""
    try:
        _link.require_root()
    except ActivityFailed as exc:
        raise InterruptExecution(str(exc)) from exc
    link = _link.Link(namespace)
    if _link.exists(link):
        logger.warning("namespace %s left over from an earlier run: removing it first", namespace)
        _link.remove(link)
    try:
        _link.create(link, host_address, namespace_address)
        _started_links.append(namespace)
        argv = ["ip", "netns", "exec", namespace, *_server.resolve_command(command)]
        target = _server.start_detached(argv, cwd, log_file, env={**os.environ, **(env or {})})
        if ready_url:
            _server.wait_http_ok(ready_url, target, timeout)
        if host_command:
            host = _server.start_detached(host_command, cwd, host_log_file, env={**os.environ, **(host_env or {})})
            _started_hosts.append(host)
            if host_ready_url:
                _server.wait_http_ok(host_ready_url, host, timeout)
        if workload:
            _started_hosts.append(_start_workload(workload, cwd))
    except (ActivityFailed, OSError, ValueError) as exc:
        _teardown()
        raise InterruptExecution(f"could not put the target behind namespace {namespace}: {exc}") from exc
    logger.info("target running behind namespace %s", namespace)


def _start_workload(workload: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    """Clients for the server behind the link, logging every request's outcome (see ``chaos.workload``)."""
    argv = [sys.executable, "-m", "chaos.workload", "--url", workload["url"], "--source", workload["source"]]
    argv += ["--log", workload["log"], "--no-feedback", "--rate", str(workload.get("rate", 20))]
    return _server.start_detached(argv, cwd, workload.get("log_file"), env=dict(os.environ))


def after_experiment_control(context: Any, state: Any = None, **kwargs: Any) -> None:
    """Stop what this control started and remove its links."""
    _teardown()


def cleanup_control() -> None:
    """Last resort when the experiment ended abnormally: the same teardown, idempotent."""
    _teardown()


def _teardown() -> None:
    while _started_hosts:
        proc = _started_hosts.pop()
        processes.stop([proc.pid, *processes.descendants(proc.pid)], grace=15.0)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            logger.warning("host process %d did not exit", proc.pid)
    while _started_links:
        namespace = _started_links.pop()
        try:
            _link.remove(_link.Link(namespace))
        except ActivityFailed as exc:
            logger.warning("could not remove namespace %s: %s", namespace, exc)
