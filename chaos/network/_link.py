"""A veth link from this host into a network namespace, driven with ``ip`` and ``tc``.

Layout for namespace ``shc-serve``::

    host netns                                   netns shc-serve
    vh-shc-serve 10.231.0.1/30  <== veth ==>  vn-shc-serve 10.231.0.2/30  (+ lo)

Whatever listens on the namespace address is reached from the host only through the
veth, so ``tc`` on its two ends shapes both directions: the host end's egress carries
requests, the namespace end's egress carries answers.

A ``blackhole`` route for the link's subnet (high metric) is installed with it: if the
host end ever goes down, the kernel drops the kernel's connected route and traffic for
the namespace would otherwise follow the default route off the machine. A cut takes
the namespace end down instead, so the host keeps its route and packets die on the link.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from chaoslib.exceptions import ActivityFailed

from serving import processes

_GUARD_METRIC = "4242"


@dataclass(frozen=True)
class Link:
    """Names and addresses of one namespace link."""

    namespace: str

    def __post_init__(self) -> None:
        if not self.namespace or len(self.namespace) > 12 or not self.namespace.replace("-", "").isalnum():
            raise ValueError(f"namespace must be 1-12 letters, digits or dashes, got {self.namespace!r}")

    @property
    def host_interface(self) -> str:
        return f"vh-{self.namespace}"

    @property
    def namespace_interface(self) -> str:
        return f"vn-{self.namespace}"


def require_root() -> None:
    """Fail with the reason when this process cannot create namespaces or shape traffic."""
    if os.geteuid() != 0:
        raise ActivityFailed("network faults need root (network namespaces, veth and tc); this process is not root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ActivityFailed(f"network faults need the {tool!r} command (iproute2), which is not on PATH")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ``ip``/``tc`` command; ActivityFailed with its stderr when it fails and ``check``."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise ActivityFailed(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def namespaces() -> set[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def exists(link: Link) -> bool:
    return link.namespace in namespaces()


def subnet(host_address: str, namespace_address: str) -> ipaddress.IPv4Network:
    """The shared subnet of the two ends; ValueError if they are not on one."""
    host = ipaddress.ip_interface(host_address)
    other = ipaddress.ip_interface(namespace_address)
    if host.network != other.network or host.ip == other.ip or not isinstance(host, ipaddress.IPv4Interface):
        raise ValueError(f"{host_address} and {namespace_address} must be two IPv4 addresses on one subnet")
    if not host.network.is_private:
        raise ValueError(f"{host.network} is not a private subnet; use one such as 10.231.0.0/30")
    return host.network


def create(link: Link, host_address: str, namespace_address: str) -> None:
    """Create the namespace, the veth pair, the addresses and the guard route."""
    net = subnet(host_address, namespace_address)
    run("ip", "netns", "add", link.namespace)
    try:
        run("ip", "link", "add", link.host_interface, "type", "veth", "peer", "name", link.namespace_interface)
        run("ip", "link", "set", link.namespace_interface, "netns", link.namespace)
        run("ip", "addr", "add", host_address, "dev", link.host_interface)
        run("ip", "route", "replace", "blackhole", str(net), "metric", _GUARD_METRIC)
        run("ip", "link", "set", link.host_interface, "up")
        run("ip", "-n", link.namespace, "addr", "add", namespace_address, "dev", link.namespace_interface)
        run("ip", "-n", link.namespace, "link", "set", link.namespace_interface, "up")
        run("ip", "-n", link.namespace, "link", "set", "lo", "up")
    except ActivityFailed:
        remove(link)
        raise


def guard_routes(link: Link) -> list[str]:
    """Subnets of the guard routes that belong to this link (found from the host end's address)."""
    out = run("ip", "-o", "-4", "addr", "show", "dev", link.host_interface, check=False).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(str(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network))
    return nets


def members(link: Link) -> list[int]:
    """Pids of the processes running in the namespace."""
    out = run("ip", "netns", "pids", link.namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def remove(link: Link) -> list[int]:
    """Stop every process in the namespace, delete the veth, the guard route and the namespace.

    Returns the pids that were stopped. Safe to call when parts are already gone.
    """
    stopped = members(link) if exists(link) else []
    processes.stop(stopped, grace=10.0)
    for net in guard_routes(link):
        run("ip", "route", "del", "blackhole", net, "metric", _GUARD_METRIC, check=False)
    run("ip", "link", "del", link.host_interface, check=False)
    if exists(link):
        run("ip", "netns", "del", link.namespace)
    with contextlib.suppress(TimeoutError):  # the kernel drops the peer asynchronously; best effort
        processes.wait_until(lambda: not _listed(link.host_interface), 5.0, link.host_interface, interval=0.05)
    return stopped


def _listed(interface: str) -> bool:
    return run("ip", "link", "show", interface, check=False).returncode == 0


def qdiscs(link: Link) -> dict[str, str]:
    """The root qdisc kind on each end (``noqueue`` when unshaped)."""
    host = run("tc", "qdisc", "show", "dev", link.host_interface, "root", check=False).stdout.split()
    inner = run("tc", "-n", link.namespace, "qdisc", "show", "dev", link.namespace_interface, "root", check=False)
    other = inner.stdout.split()
    return {"host": host[1] if len(host) > 1 else "none", "namespace": other[1] if len(other) > 1 else "none"}


def is_up(link: Link) -> bool:
    out = run("ip", "-n", link.namespace, "-o", "link", "show", link.namespace_interface, check=False).stdout
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags


def shape(link: Link, qdisc: str, rate: str, burst: str, latency: str, direction: str) -> None:
    """Replace the root qdisc of one or both ends with a ``tbf`` or ``htb`` rate limit."""
    if direction not in ("both", "to_namespace", "from_namespace"):
        raise ValueError(f"direction must be 'both', 'to_namespace' or 'from_namespace', got {direction!r}")
    if qdisc not in ("tbf", "htb"):
        raise ValueError(f"qdisc must be 'tbf' or 'htb', got {qdisc!r}")
    targets: list[tuple[str, ...]] = []
    if direction in ("both", "to_namespace"):
        targets.append(("tc", "qdisc", "replace", "dev", link.host_interface))
    if direction in ("both", "from_namespace"):
        targets.append(("tc", "-n", link.namespace, "qdisc", "replace", "dev", link.namespace_interface))
    for prefix in targets:
        if qdisc == "tbf":
            run(*prefix, "root", "handle", "1:", "tbf", "rate", rate, "burst", burst, "latency", latency)
        else:
            # One class holding everything: the default class of an htb root.
            run(*prefix, "root", "handle", "1:", "htb", "default", "10")
            cls = [part if part != "qdisc" else "class" for part in prefix]
            run(*cls, "parent", "1:", "classid", "1:10", "htb", "rate", rate, "ceil", rate, "burst", burst)


def unshape(link: Link) -> None:
    """Remove any root qdisc from both ends (back to the default)."""
    run("tc", "qdisc", "del", "dev", link.host_interface, "root", check=False)
    run("tc", "-n", link.namespace, "qdisc", "del", "dev", link.namespace_interface, "root", check=False)


def set_namespace_end(link: Link, up: bool) -> None:
    run("ip", "-n", link.namespace, "link", "set", link.namespace_interface, "up" if up else "down")
