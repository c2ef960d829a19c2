"""Real servers for the deployment tests: a Prefect server, workers, the model server, Prometheus."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.prefect_runs import prefect_api
from serving.processes import free_port, http_ok, process_tree, stop, wait_until

PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = PROJECT / "deployments"
PREFECT_FILE = DEPLOYMENTS / "prefect.yaml"


@dataclass
class Background:
    """A process started in its own session, stopped with everything it started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        stop(process_tree(self.proc.pid), grace=10.0)
        self.proc.wait(timeout=10)


@dataclass
class Processes:
    """Starts background processes for one test (or module) and stops them all at the end."""

    folder: Path
    env: dict[str, str]
    started: list[Background] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Background:
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=PROJECT,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        bg = Background(name, proc, log)
        self.started.append(bg)
        return bg

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
        done = subprocess.run(
            argv,
            cwd=PROJECT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        return done.stdout

    def stop_all(self) -> None:
        for bg in reversed(self.started):
            bg.stop()
        self.started.clear()


def base_env(home: Path) -> dict[str, str]:
    """An environment that knows nothing of the user's Prefect profile or selfheal config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SELFHEAL_"))}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        MLFLOW_ENABLE_TELEMETRY="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def write_config(folder: Path, serving_port: int) -> Path:
    """A selfheal.yaml whose state lives in ``folder``."""
    config = folder / "selfheal.yaml"
    spec = {
        "home": "state",
        "lake": {"root": "state/lake"},
        "landing": {"path": "state/landing"},
        "serving": {"port": serving_port, "workers": 1},
        "trainer": {"params": {"max_iter": 20}},
    }
    config.write_text(yaml.safe_dump(spec))
    return config


@dataclass
class PrefectServer:
    url: str
    env: dict[str, str]
    processes: Processes

    def api(self, method: str, path: str, json: Any = None) -> Any:
        return prefect_api(method, f"{self.url}{path}", json)

    def prefect(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
        return self.processes.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, timeout=timeout)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real ``prefect server start`` (SQLite in a temporary PREFECT_HOME) on a free port."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**base_env(home), "PREFECT_API_URL": url}
    processes = Processes(home, env)
    server = processes.start(
        "prefect-server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
    )
    try:
        wait_until(lambda: http_ok(f"{url}/health") or server.proc.poll() is not None, 120, "the Prefect server")
        assert server.proc.poll() is None, server.tail()
        yield PrefectServer(url, env, processes)
    finally:
        processes.stop_all()
