"""Serving faults and probes against real gunicorn servers: real signals, real HTTP, a real workload."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import ledger
from chaos.serving import actions, probes
from chaos.workload import Outcome, RecordSource, TrafficLog, Workload, read_outcomes
from serving import processes
from serving.processes import free_port
from tests.chaos.conftest import MODEL, TARGET, FraudStore, LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def payload(fraud_store: FraudStore, tmp_path: Path) -> Path:
    from chaos.workload import read_records

    record = read_records(fraud_store.labeled)[0]
    path = tmp_path / "payload.json"
    path.write_text(json.dumps({k: record[k] for k in fraud_store.features}))
    return path


@pytest.fixture
def workload(fraud_store: FraudStore, tmp_path: Path) -> Iterator[Callable[[str], Workload]]:
    """Client threads against a URL, writing tmp_path/traffic.jsonl; stopped at the end."""
    running: list[tuple[Workload, threading.Thread]] = []

    def start(url: str) -> Workload:
        source = RecordSource(fraud_store.labeled, fraud_store.features, TARGET)
        load = Workload(url, source, TrafficLog(tmp_path / "traffic.jsonl"), rate=40.0, threads=4)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        running.append((load, thread))
        return load

    yield start
    for load, thread in running:
        load.stop.set()
        thread.join(10)
        load.log.close()


@pytest.fixture
def server_under_load(
    live_server: Callable[..., LiveServer], workload: Callable[[str], Workload], tmp_path: Path
) -> LiveServer:
    """A live server whose clients have already been answered (a fault then hits a server in use)."""
    server = live_server()
    workload(server.url)

    def answered() -> bool:
        return sum(o.ok for o in read_outcomes(tmp_path / "traffic.jsonl")) >= 20

    processes.wait_until(answered, 30.0, "20 answered client requests")
    return server


def test_kill_worker_is_replaced_while_the_other_keeps_answering(
    server_under_load: LiveServer, config: dict[str, Any], payload: Path, tmp_path: Path
) -> None:
    server = server_under_load
    before = processes.children(server.proc.pid)
    killed = actions.kill_worker(server.url, configuration=config)
    assert killed["pid"] in before and killed["master"] == server.proc.pid
    assert not processes.alive(killed["pid"])
    assert ledger.last_event(config, "fault") == killed["at"]
    replaced = probes.seconds_until_workers(server.url, workers=2, timeout=30, configuration=config)
    answers = probes.seconds_until_serving_answers(
        server.url, timeout=30, payload_file=str(payload), configuration=config
    )
    assert replaced < 30 and answers < 30
    assert killed["pid"] not in processes.children(server.proc.pid)
    share = probes.availability(str(tmp_path / "traffic.jsonl"), window_seconds=4, configuration=config)
    assert share >= 0.99, read_outcomes(tmp_path / "traffic.jsonl", start=killed["at"])[:20]


def test_a_hung_worker_is_replaced_by_the_heartbeat_while_the_other_keeps_answering(
    server_under_load: LiveServer, config: dict[str, Any], payload: Path, tmp_path: Path
) -> None:
    server = server_under_load
    assert probes.seconds_until_worker_replaced(server.url, workers=2, timeout=5, configuration=config) < 5
    hung = actions.hang_worker(server.url, configuration=config)
    assert hung["master"] == server.proc.pid and processes.stopped(hung["pid"])
    assert ledger.last_event(config, "fault") == hung["at"]
    # Alive to the process table, so the old count says nothing: the stopped worker is still one of two.
    assert hung["pid"] in processes.children(server.proc.pid)
    replaced = probes.seconds_until_worker_replaced(server.url, workers=2, timeout=30, configuration=config)
    assert replaced < 30 and not processes.alive(hung["pid"]), server.tail()
    assert probes.seconds_until_serving_answers(server.url, timeout=30, payload_file=str(payload), configuration=config)
    # Over the whole stretch the worker hung, up to its replacement: each client lost at most one request.
    window = replaced + 1.0
    share = probes.availability(str(tmp_path / "traffic.jsonl"), window_seconds=window, configuration=config)
    assert share >= 0.99, read_outcomes(tmp_path / "traffic.jsonl", start=hung["at"])[:20]
    assert actions.release_hung_worker(configuration=config)["released"] is False


def test_release_hung_worker_kills_the_worker_still_stopped(
    live_server: Callable[..., LiveServer], config: dict[str, Any]
) -> None:
    assert actions.release_hung_worker(configuration=config)["released"] is False  # nothing stopped in this run
    server = live_server()
    hung = actions.hang_worker(server.url, configuration=config)
    released = actions.release_hung_worker(configuration=config)
    assert released == {"released": True, "pid": hung["pid"], "detail": "killed the worker still stopped"}
    assert not processes.alive(hung["pid"])
    assert probes.seconds_until_workers(server.url, workers=2, timeout=30, since="now", configuration=config) < 30


def test_kill_replica_is_started_again_by_the_supervisor_while_the_other_answers(
    live_server: Callable[..., LiveServer], workload: Callable[[str], Workload], config: dict[str, Any], tmp_path: Path
) -> None:
    server = live_server(workers=1, replicas=2)
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(f"{server.proc.pid}\n")
    assert probes.seconds_until_servers_ready(server.url, 2, timeout=30, since="now", configuration=config) < 30
    masters = processes.children(server.proc.pid)
    workload(server.url)
    processes.wait_until(lambda: len(read_outcomes(tmp_path / "traffic.jsonl")) >= 20, 30.0, "20 answered requests")

    killed = actions.kill_replica(server.url, pid_file=str(pid_file), configuration=config)
    assert killed["master"] in masters and len(killed["pids"]) == 2  # the master and its worker
    assert all(not processes.alive(pid) for pid in killed["pids"])
    # A third server never comes: the probe waits for what it is told, not for any change.
    with pytest.raises(ActivityFailed, match="3 servers ready .* not met within 2s"):
        probes.seconds_until_servers_ready(server.url, 3, timeout=2, pid_file=str(pid_file), configuration=config)
    back = probes.seconds_until_servers_ready(server.url, 2, timeout=60, pid_file=str(pid_file), configuration=config)
    now = processes.children(server.proc.pid)
    assert killed["master"] not in now and len(now) == 2 and back < 60
    served = probes.availability_during_fault(str(tmp_path / "traffic.jsonl"), min_seconds=2, configuration=config)
    assert served >= 0.95, served


def test_kill_replica_needs_two_servers(live_server: Callable[..., LiveServer], config: dict[str, Any]) -> None:
    server = live_server()
    with pytest.raises(ActivityFailed, match="runs 1 master"):
        actions.kill_replica(server.url, configuration=config)
    assert processes.alive(server.proc.pid)


def test_kill_server_then_answers_never_until_restarted(
    live_server: Callable[..., LiveServer], config: dict[str, Any], payload: Path, tmp_path: Path
) -> None:
    server = live_server()
    killed = actions.kill_server(server.url, configuration=config)
    assert server.proc.pid in killed["pids"] and len(killed["pids"]) == 3
    assert all(not processes.alive(pid) for pid in killed["pids"])
    with pytest.raises(ActivityFailed, match="serving answers .* not met within 1s"):
        probes.seconds_until_serving_answers(server.url, timeout=1, configuration=config)
    pid_file = tmp_path / "restarted.pid"
    started = actions.start_server_if_down(
        server.url,
        server.command,
        cwd=str(tmp_path),
        log_file=str(tmp_path / "restarted.log"),
        pid_file=str(pid_file),
        env=server.env,
        configuration=config,
    )
    try:
        assert started["started"] is True and int(pid_file.read_text()) == started["pid"]
        seconds = probes.seconds_until_serving_answers(
            server.url, timeout=5, payload_file=str(payload), configuration=config
        )
        assert seconds >= started["seconds"] * 0.5  # measured from the kill, not from the probe
        assert actions.start_server_if_down(server.url, server.command)["started"] is False
    finally:
        processes.kill([started["pid"], *processes.descendants(started["pid"])], signal.SIGTERM, timeout=30)


def test_kill_worker_refuses_what_is_not_a_server(tmp_path: Path) -> None:
    with pytest.raises(ActivityFailed, match="does not answer GET /health"):
        actions.kill_worker(f"http://127.0.0.1:{free_port()}")


def test_model_quality_both_ways(shared_server: LiveServer, fraud_store_template: FraudStore) -> None:
    server, fraud_store = shared_server, fraud_store_template
    args: dict[str, Any] = dict(
        tracking_uri=fraud_store.tracking_uri, model_name=MODEL, labeled_file=str(fraud_store.labeled)
    )
    assert probes.seconds_until_model_quality(server.url, target=TARGET, minimum=0.75, timeout=30, **args) < 30
    with pytest.raises(ActivityFailed, match=r"roc_auc >= 0\.999.*v1: roc_auc=0\.\d+"):
        probes.seconds_until_model_quality(server.url, target=TARGET, minimum=0.999, timeout=2, **args)


def test_window_availability_both_ways(shared_server: LiveServer, payload: Path) -> None:
    server = shared_server
    assert probes.seconds_until_availability(server.url, str(payload), window_seconds=1, timeout=10) < 10
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ActivityFailed, match=r"availability >= 0\.99 .* 0/\d+ answered"):
        probes.seconds_until_availability(dead, str(payload), window_seconds=0.5, timeout=1)


def test_predictions_lost_compares_answers_with_the_inference_log(
    shared_server: LiveServer, workload: Callable[[str], Workload], tmp_path: Path
) -> None:
    load = workload(shared_server.url)
    time.sleep(3.0)
    load.stop.set()
    time.sleep(3.0)  # flush interval 0.5 s
    log = str(tmp_path / "traffic.jsonl")
    lake = shared_server.env["SELFHEAL_LAKE_ROOT"]
    assert probes.predictions_lost(log, lake, since="now", window_seconds=30, settle_seconds=1) == 0
    TrafficLog(log).write(Outcome(time.time() - 5, True, "200", "primary", ("never-logged-1", "never-logged-2")))
    assert probes.predictions_lost(log, lake, since="now", window_seconds=30, settle_seconds=1) == 2


# -- availability from a traffic log (no server) ----------------------------------------------------
def _log(path: Path, outcomes: list[tuple[float, bool]]) -> None:
    log = TrafficLog(path)
    for t, ok in outcomes:
        log.write(Outcome(t, ok, "200" if ok else "ConnectError"))
    log.close()


def test_availability_counts_the_window_after_the_fault(tmp_path: Path, config: dict[str, Any]) -> None:
    fault = ledger.record(config, "fault", fault="x", at=time.time() - 3.0)
    path = tmp_path / "t.jsonl"
    # Before the fault: failures (outside the window); in the 2.5 s after it: 19 of 20 answered.
    _log(
        path, [(fault - 1 + i / 100, False) for i in range(50)] + [(fault + 0.05 + 0.1 * i, i != 7) for i in range(20)]
    )
    started = time.time()
    share = probes.availability(str(path), window_seconds=2.5, settle_seconds=0, min_requests=10, configuration=config)
    assert share == pytest.approx(19 / 20)
    assert time.time() - started < 1  # the window was already over: no wait


def test_availability_during_fault_counts_the_outage(tmp_path: Path, config: dict[str, Any]) -> None:
    fault = ledger.record(config, "fault", fault="x", at=time.time() - 4.0)
    path = tmp_path / "t.jsonl"
    # A 1 s outage right after the fault (10 refused), then 30 answered: the outage counts.
    _log(
        path, [(fault + 0.05 + 0.1 * i, False) for i in range(10)] + [(fault + 1.05 + 0.1 * i, True) for i in range(30)]
    )
    args = {"min_requests": 10, "min_seconds": 0.0, "settle_seconds": 0.0, "configuration": config}
    assert probes.availability_during_fault(str(path), **args) == pytest.approx(30 / 40)
    # A declared bounded outage is left out of the share held to the SLA.
    assert probes.availability_during_fault(str(path), outage_seconds=1.0, **args) == 1.0
    # A request sent in the outage whose timeout came back after it is the outage's; one sent after it is not.
    log = TrafficLog(path)
    log.write(Outcome(fault + 1.5, False, "ConnectTimeout", ms=1000.0))  # sent at +0.5 s, in the outage
    log.close()
    assert probes.availability_during_fault(str(path), outage_seconds=1.0, **args) == 1.0
    log = TrafficLog(path)
    log.write(Outcome(fault + 1.6, False, "ConnectError", ms=10.0))  # sent at +1.59 s, after it
    log.close()
    assert probes.availability_during_fault(str(path), outage_seconds=1.0, **args) == pytest.approx(30 / 31)
    with pytest.raises(ActivityFailed, match="only 0 requests"):
        probes.availability_during_fault(str(tmp_path / "none.jsonl"), **args)


def test_availability_before_the_fault_is_the_next_seconds_not_the_last(tmp_path: Path, config: dict[str, Any]) -> None:
    """The previous experiment's outage (just before this one started) is not this steady state's."""
    path = tmp_path / "t.jsonl"
    _log(path, [(time.time() - 3 + 0.01 * i, False) for i in range(100)])  # an outage that just ended
    log = TrafficLog(path)

    def clients() -> None:
        for _ in range(50):
            log.write(Outcome(time.time(), True, "200"))
            time.sleep(0.05)

    writer = threading.Thread(target=clients)
    writer.start()
    share = probes.availability_during_fault(str(path), min_requests=20, settle_seconds=0.5, configuration=config)
    writer.join()
    log.close()
    assert share == 1.0


def test_availability_without_traffic_fails(tmp_path: Path) -> None:
    with pytest.raises(ActivityFailed, match="only 0 requests"):
        probes.availability(str(tmp_path / "none.jsonl"), window_seconds=0.1, settle_seconds=0)


def test_a_client_that_fell_behind_skips_its_missed_slots(tmp_path: Path) -> None:
    """A slow second must not be followed by a burst: that would turn one refused second into several."""
    load = Workload("http://127.0.0.1:9", None, TrafficLog(tmp_path / "t.jsonl"), rate=100.0, threads=1)  # type: ignore[arg-type]
    ticks = load._ticks()
    next(ticks)
    time.sleep(0.5)  # 50 slots missed while one request hung
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < 0.2:
        next(ticks)
        sent += 1
    load.stop.set()
    assert sent <= 25  # 20 at the rate, plus the one slot of slack; not 70
