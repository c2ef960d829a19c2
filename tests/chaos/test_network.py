"""Network faults with real namespaces, veth pairs and tc qdiscs (root only; skipped with the reason otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaoslib.exceptions import ActivityFailed, InterruptExecution

from chaos import ledger
from chaos.network import _link, actions, control, probes
from serving import processes
from tests.chaos.conftest import needs_root

pytestmark = [needs_root, pytest.mark.integration]

BLOB_BYTES = 400_000


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A link into a fresh namespace with an HTTP file server behind it; removed at the end."""
    name = f"sht-{os.getpid() % 100000}"
    host, inner = "10.231.250.1", "10.231.250.2"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "blob.bin").write_bytes(os.urandom(BLOB_BYTES))
    (tmp_path / "www" / "ok").write_text("ok")
    created = actions.create_link(name, f"{host}/30", f"{inner}/30")
    try:
        started = actions.start_in_namespace(
            name,
            [sys.executable, "-m", "http.server", "8080", "--bind", inner],
            cwd=str(tmp_path / "www"),
            log_file=str(tmp_path / "httpd.log"),
            ready_url=f"http://{inner}:8080/ok",
            timeout=30,
        )
        yield {"namespace": name, "host": host, "inner": inner, "pid": str(started["pid"]), **created}
    finally:
        actions.remove_link(name)


def _download_seconds(url: str) -> float:
    started = time.monotonic()
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200 and len(response.content) == BLOB_BYTES
    return time.monotonic() - started


def test_link_layout_and_status(namespace: dict[str, str]) -> None:
    status = probes.link_status(namespace["namespace"])
    assert status["exists"] and status["up"] and not status["shaped"]
    route = subprocess.run(["ip", "route", "get", namespace["inner"]], capture_output=True, text=True).stdout
    assert f"dev {namespace['host_interface']}" in route


@pytest.mark.parametrize("qdisc", ["tbf", "htb"])
def test_throttle_limits_the_bandwidth_then_restore_lifts_it(
    namespace: dict[str, str], config: dict[str, Any], qdisc: str
) -> None:
    url = f"http://{namespace['inner']}:8080/blob.bin"
    fast = _download_seconds(url)
    shaped = actions.throttle_link(
        namespace["namespace"], rate="1mbit", burst="32kbit", qdisc=qdisc, configuration=config
    )
    assert shaped["qdiscs"] == {"host": qdisc, "namespace": qdisc}
    assert probes.link_status(namespace["namespace"])["shaped"]
    slow = _download_seconds(url)
    # 400 kB at 1 Mbit/s is about 3.2 s; unthrottled it is a few milliseconds.
    assert slow > 2.0 and slow > 10 * fast, (fast, slow)
    assert ledger.last_event(config, "fault") == shaped["at"]
    restored = actions.restore_link(namespace["namespace"], configuration=config)
    assert restored["qdiscs"] == {"host": "noqueue", "namespace": "noqueue"} and restored["up"]
    assert _download_seconds(url) < 1.0


def test_cut_stops_everything_and_restore_brings_it_back(namespace: dict[str, str], config: dict[str, Any]) -> None:
    host, port = namespace["inner"], 8080
    assert probes.seconds_until_reachable(host, port, timeout=5, configuration=config) < 5
    cut = actions.cut_link(namespace["namespace"], configuration=config)
    assert cut["up"] is False
    with pytest.raises(ActivityFailed, match=r"10\.231\.250\.2:8080 reachable: not met within 1s"):
        probes.seconds_until_reachable(host, port, timeout=1, since="now", configuration=config)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{host}:{port}/ok", timeout=1)
    actions.restore_link(namespace["namespace"], configuration=config)
    seconds = probes.seconds_until_reachable(host, port, timeout=10, since="restore", configuration=config)
    assert seconds < 10
    assert httpx.get(f"http://{host}:{port}/ok", timeout=5).text == "ok"


def test_the_guard_route_keeps_traffic_on_this_machine(namespace: dict[str, str]) -> None:
    """With the host end down the kernel drops the link's route: the blackhole route must take over."""
    subprocess.run(["ip", "link", "set", namespace["host_interface"], "down"], check=True)
    try:
        out = subprocess.run(["ip", "route", "get", namespace["inner"]], capture_output=True, text=True)
        assert "via" not in out.stdout and namespace["host_interface"] not in out.stdout
        assert out.returncode != 0 or "blackhole" in out.stdout
    finally:
        subprocess.run(["ip", "link", "set", namespace["host_interface"], "up"], check=True)


def test_remove_link_leaves_nothing_behind(tmp_path: Path) -> None:
    name = f"shr-{os.getpid() % 100000}"
    actions.create_link(name, "10.231.251.1/30", "10.231.251.2/30")
    started = actions.start_in_namespace(name, ["sleep", "300"], cwd=str(tmp_path))
    with pytest.raises(ValueError, match="already exists"):
        actions.create_link(name, "10.231.251.1/30", "10.231.251.2/30")
    removed = actions.remove_link(name)
    assert removed["removed"] and started["pid"] in removed["stopped"]
    assert not processes.alive(started["pid"])
    assert name not in _link.namespaces()
    assert subprocess.run(["ip", "link", "show", f"vh-{name}"], capture_output=True).returncode != 0
    routes = subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True).stdout
    assert "10.231.251.0/30" not in routes
    assert actions.remove_link(name)["stopped"] == []  # twice is fine
    assert probes.link_status(name) == {"namespace": name, "exists": False, "up": False, "shaped": False, "qdiscs": {}}


def test_control_puts_a_target_behind_a_link_for_one_experiment(tmp_path: Path) -> None:
    name = f"shc-{os.getpid() % 100000}"
    (tmp_path / "ok").write_text("ok")
    control.before_experiment_control(
        {"title": "t"},
        namespace=name,
        command=[sys.executable, "-m", "http.server", "8080", "--bind", "10.231.252.2"],
        host_address="10.231.252.1/30",
        namespace_address="10.231.252.2/30",
        ready_url="http://10.231.252.2:8080/ok",
        cwd=str(tmp_path),
        timeout=30,
    )
    try:
        assert httpx.get("http://10.231.252.2:8080/ok", timeout=5).text == "ok"
    finally:
        control.after_experiment_control({"title": "t"})
    assert name not in _link.namespaces()
    control.cleanup_control()  # idempotent


def test_control_interrupts_when_the_target_does_not_start(tmp_path: Path) -> None:
    name = f"shf-{os.getpid() % 100000}"
    with pytest.raises(InterruptExecution, match="could not put the target behind namespace"):
        control.before_experiment_control(
            {"title": "t"},
            namespace=name,
            command=[sys.executable, "-c", "raise SystemExit(3)"],
            host_address="10.231.253.1/30",
            namespace_address="10.231.253.2/30",
            ready_url="http://10.231.253.2:8080/",
            cwd=str(tmp_path),
            timeout=20,
        )
    assert name not in _link.namespaces()


@pytest.mark.parametrize(
    ("host", "inner", "message"),
    [("10.0.0.1/30", "10.0.1.2/30", "one subnet"), ("8.8.8.1/30", "8.8.8.2/30", "not a private subnet")],
)
def test_addresses_are_checked(host: str, inner: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        actions.create_link("shx-bad", host, inner)
    assert "shx-bad" not in _link.namespaces()


def test_namespace_names_are_checked() -> None:
    with pytest.raises(ValueError, match="1-12 letters"):
        actions.cut_link("a name with spaces")


def test_without_root_the_reason_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ActivityFailed, match="network faults need root"):
        actions.throttle_link("whatever")
    with pytest.raises(InterruptExecution, match="network faults need root"):
        control.before_experiment_control({"title": "t"}, namespace="whatever", command=["true"])
