"""One real server (gunicorn + uvicorn workers, random port) that stays on one model: kill -9, auth, fuzzing."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serving.conftest import LiveServer, Load, ModelStore, http, predict_bodies, start_server, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def steady_server(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests that only read (champion hgb, previous lr)."""
    model_store.set_aliases(champion=model_store.versions["hgb"], previous=model_store.versions["lr"])
    server = start_server(model_store, tmp_path_factory.mktemp("steady"), workers=2, poll_seconds=3600)
    yield server
    server.stop()


def test_kill_9_of_a_worker_under_load_keeps_answering(model_store: ModelStore, steady_server: LiveServer) -> None:
    server = steady_server
    before = server.worker_pids()
    load = Load(server.url, predict_bodies(model_store), threads=4).start()
    load.wait_for(150)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)

    def replaced_and_ready() -> set[int]:
        # One look per call: two workers, the victim not among them, both serving a model.
        # (On a busy 2-core machine a booting worker can itself be replaced; any new pid counts.)
        ready = server.ready_pids()
        return ready if len(ready) == 2 and victim not in ready and ready - set(before) else set()

    wait_until(replaced_and_ready, timeout=90, what="a replacement worker that has loaded its model")
    load.wait_for(500)
    load.stop()
    assert load.total >= 650  # at most one in-flight request per client thread can die with the worker
    assert load.ok / load.total >= 0.99, load.statuses
    assert server.proc.poll() is None


def test_admin_without_token_is_401_on_the_live_server(steady_server: LiveServer) -> None:
    server = steady_server
    for path in ("/admin/reload", "/admin/rollback"):
        response = http.post(f"{server.url}{path}")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert http.post(f"{server.url}{path}", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_fuzzing_predict_never_answers_5xx(model_store: ModelStore, steady_server: LiveServer) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = steady_server
    base = model_store.records(1)[0]
    names = list(base)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=10,
    )
    mutated_record = st.fixed_dictionaries(
        {},
        optional={name: json_values for name in names} | {"extra": json_values},
    ).map(lambda changes: {**base, **changes})
    dropped = st.sets(st.sampled_from(names), max_size=3).map(
        lambda drop: {k: x for k, x in base.items() if k not in drop}
    )

    def dump(value: Any) -> bytes:
        return json.dumps(value).encode()  # stdlib: big integers and Infinity reach the server as sent

    bodies_ = st.one_of(
        mutated_record.map(dump),
        dropped.map(dump),
        st.lists(mutated_record, min_size=0, max_size=5).map(dump),
        st.lists(mutated_record, max_size=3).map(lambda rs: dump({"dataframe_records": rs})),
        json_values.map(dump),
        st.binary(max_size=200),
    )
    seen: set[int] = set()

    with httpx.Client(base_url=server.url, timeout=30) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=bodies_)
        def check(body: bytes) -> None:
            response = client.post("/predict", content=body, headers={"content-type": "application/json"})
            seen.add(response.status_code)
            assert response.status_code < 500, (body, response.text)
            if response.status_code == 200:
                answer = response.json()
                assert answer["served_by"] in {"primary", "fallback", "baseline"}
                assert len(answer["predictions"]) == len(answer["ids"])
            else:
                assert response.status_code == 422 and response.json()["detail"]

        check()
    assert seen == {200, 422}
