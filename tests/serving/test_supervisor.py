"""``python -m serving --replicas 2``: a killed master is started again while the other keeps the port."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving import processes
from tests.serving.conftest import REPO_ROOT, Load, ModelStore, http, predict_bodies, server_env, wait_until

pytestmark = pytest.mark.integration


class _Replicas:
    """The supervisor's process and what it runs: one gunicorn master per replica, one worker each (and a front)."""

    def __init__(self, store: ModelStore, tmp_path: Path, *options: str) -> None:
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "supervisor.log"
        cmd = [sys.executable, "-m", "serving", "--log-level", "info", "--port", str(self.port)]
        cmd += ["--workers", "1", "--replicas", "2", *options]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=server_env(store, tmp_path), stdout=out, stderr=subprocess.STDOUT
            )

    def masters(self) -> list[int]:
        return processes.replica_masters(self.proc.pid)

    def workers(self) -> set[int]:
        return {w for m in self.masters() for w in processes.children(m)}

    def wait_every_worker_ready(self, timeout: float = 120.0) -> None:
        """Until /ready (answered by whichever worker the kernel picks) has come from every worker."""
        seen: set[int] = set()

        def every_worker_answered() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                answer = http.get(f"{self.url}/ready", timeout=5)
            except httpx.HTTPError:
                return False
            if answer.status_code == 200:
                seen.add(int(answer.json()["pid"]))
            workers = self.workers()
            return len(self.masters()) == 2 and len(workers) == 2 and workers <= seen

        wait_until(every_worker_answered, timeout, "both replicas' workers ready", interval=0.05)

    def scrape(self) -> tuple[float, set[int]]:
        """``/metrics`` from whichever replica answers: the requests counted, the pids with live gauges."""
        text = http.get(f"{self.url}/metrics", timeout=5).text
        requests, pids = 0.0, set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == "selfheal_http_requests" and sample.name.endswith("_total"):
                    requests += sample.value
                if "pid" in sample.labels:
                    pids.add(int(sample.labels["pid"]))
        return requests, pids

    def all_pids(self) -> set[int]:
        return {self.proc.pid, *processes.process_tree(self.proc.pid)}

    def kill_everything(self) -> None:
        leftovers = self.all_pids()
        self.proc.kill()
        self.proc.wait(10)
        processes.kill(leftovers)


def test_a_killed_master_is_started_again_while_the_other_replica_keeps_answering(
    model_store: ModelStore, tmp_path: Path
) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    server = _Replicas(model_store, tmp_path)
    load = None
    try:
        server.wait_every_worker_ready()
        load = Load(server.url, predict_bodies(model_store), threads=4).start()
        load.wait_for(200)
        victim, survivor = server.masters()
        orphan = processes.children(victim)
        answered_before = load.ok
        assert not processes.kill([victim])  # the master alone, SIGKILL: its worker must not serve on
        killed_at = time.monotonic()
        wait_until(lambda: not any(processes.alive(p) for p in orphan), 30, "the dead master's worker to exit")
        # While the supervisor starts a new master (a cold start), the survivor answers on the same port.
        wait_until(lambda: victim not in server.masters() and len(server.masters()) == 2, 30, "a new replica")
        load.wait_for(200)
        answered_in_gap = load.ok - answered_before
        server.wait_every_worker_ready()
        back_after = time.monotonic() - killed_at
        load.stop()
        assert survivor in server.masters()
        log = server.log.read_text()
        assert re.search(rf"replica \d \(pid {victim}\) exited \(killed by SIGKILL\)", log), log
        failed = load.total - load.ok
        print(f"replica back after {back_after:.1f} s; {answered_in_gap} answered meanwhile, {failed} failed")
        assert answered_in_gap >= 200
        # Only requests in flight on the dead replica's connections fail (one per client thread at most).
        assert failed <= load.threads, load.statuses

        # One runtime folder for every replica: any scrape counts the whole server's requests
        # (the dead replica's included, so the counter never goes back) and no dead worker's gauges.
        seen = [server.scrape() for _ in range(12)]
        counts = [requests for requests, _ in seen]
        assert counts == sorted(counts) and counts[0] >= load.ok, counts
        assert all(pids <= server.workers() for _, pids in seen), (seen, server.workers(), orphan)

        # SIGTERM stops every replica and their workers; the supervisor exits 0.
        everything = server.all_pids()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        wait_until(lambda: not any(processes.alive(p) for p in everything), 30, "every replica stopped")
    finally:
        if load is not None:
            load.stop()
        server.kill_everything()


def test_replicas_exit_when_their_supervisor_is_killed(model_store: ModelStore, tmp_path: Path) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    server = _Replicas(model_store, tmp_path)
    everything: set[int] = set()
    try:
        server.wait_every_worker_ready()
        everything = server.all_pids()
        server.proc.kill()  # no signal to forward: the replicas learn it from PR_SET_PDEATHSIG
        server.proc.wait(10)
        wait_until(lambda: not any(processes.alive(p) for p in everything), 60, "the orphaned replicas to exit")
        assert not processes.port_in_use(server.port)
    finally:
        server.proc.kill()
        server.proc.wait(10)
        processes.kill(everything)


def _workers_answering(url: str, clients: int, requests: int) -> Counter[int]:
    """Which worker answered each ``/ready`` of ``clients`` keep-alive clients sending ``requests`` each."""

    def one_client(_: int) -> list[int]:
        with httpx.Client(timeout=10) as client:
            return [int(client.get(f"{url}/ready").json()["pid"]) for _ in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        return Counter(pid for pids in pool.map(one_client, range(clients)) for pid in pids)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy (deployments/install-test-deps.sh installs it)")
def test_behind_the_haproxy_front_a_killed_worker_loses_no_request(model_store: ModelStore, tmp_path: Path) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    server = _Replicas(model_store, tmp_path, "--front", "haproxy")
    load = None
    try:
        server.wait_every_worker_ready()
        # The front keeps its connections to the replicas open: each replica has a socket of its
        # own, so both workers answer (on one shared socket the kernel may give one worker all).
        answered = _workers_answering(server.url, clients=8, requests=40)
        assert set(answered) == server.workers() and min(answered.values()) >= 0.25 * answered.total(), answered
        load = Load(server.url, predict_bodies(model_store), threads=8).start()
        load.wait_for(300)
        for round_ in range(3):  # each time a worker with requests in flight: 8 clients on 2 workers
            victim = sorted(server.workers())[round_ % 2]
            assert not processes.kill([victim])
            wait_until(lambda v=victim: v not in server.workers() and len(server.workers()) == 2, 30, "a new worker")
            load.wait_for(300)
        load.stop()
        # Each kill dropped the connections it held; the front sent their requests again.
        assert load.total - load.ok == 0, load.statuses
        assert load.ok >= 1200
    finally:
        if load is not None:
            load.stop()
        server.kill_everything()
