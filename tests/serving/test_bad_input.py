"""Input the server cannot take never yields a 5xx, never grows a worker, never restarts one (issue 15).

One live server (gunicorn, two uvicorn workers, the session's MLflow registry) takes:
the defects found by hand (each failed on d5107c0), then schemathesis against its own
OpenAPI document with every check, then hypothesis-generated bodies, headers and bytes.
Each fuzzing test runs its generator inside itself and checks its own totals (at least
500 schemathesis and 1,500 hypothesis requests, no 5xx, the same worker processes as at
the start) and prints its status counts, so no check depends on which xdist worker ran
which test.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, is_check_class, load_all_checks

from tests.serving.conftest import ADMIN_TOKEN, LiveServer, ModelStore, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"content-type": "application/json"}
LIMIT = 8_000_000  # the default SELFHEAL_MAX_BODY_BYTES
QUEUE_ROWS = 200_000  # the default SELFHEAL_LOG_QUEUE_ROWS
FEEDBACK_LIMIT = 10_000  # the default SELFHEAL_MAX_FEEDBACK_LABELS


@pytest.fixture(scope="module")
def server(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model_store.set_aliases(champion=model_store.versions["hgb"], previous=model_store.versions["lr"])
    run = tmp_path_factory.mktemp("bad-input")
    live = start_server(model_store, run, workers=2, label_values="[0, 1]")
    live.started_pids = sorted(live.worker_pids())  # type: ignore[attr-defined]
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, headers=headers or JSON, timeout=60)


def workers_rss(server: LiveServer) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.worker_pids())


# -- the defects, one test each (all failed on d5107c0) ---------------------------------------------
def _labels_body(size: int) -> bytes:
    item = b'{"request_id": "0123456789abcdef00000000:17", "label": 1}'
    return b"[" + b",".join([item] * (size // (len(item) + 1))) + b"]"


def test_a_55_mb_feedback_body_is_refused_without_growing_a_worker(server: LiveServer) -> None:
    body = _labels_body(55_000_000)
    before = workers_rss(server)
    declared = post(server, "/feedback", body)
    chunks = (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))  # no Content-Length: counted
    chunked = httpx.post(f"{server.url}/feedback", content=chunks, headers=JSON, timeout=60)
    grown = workers_rss(server) - before
    print(f"\n{len(body) >> 20} MB body: workers {before >> 20} MB before, grew {grown >> 20} MB")
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text[:300]
        assert f"the limit is {LIMIT} bytes (SELFHEAL_MAX_BODY_BYTES)" in answer.json()["detail"]
    # d5107c0 buffered and parsed it: one worker went from ~0.4 to ~1.5 GB. Now at most the limit is held.
    assert grown < len(body) // 4, f"the workers grew by {grown >> 20} MB for a {len(body) >> 20} MB body"


def test_a_body_over_the_limit_is_refused_on_every_post_route(server: LiveServer) -> None:
    body = b'{"x": "' + b"a" * LIMIT + b'"}'
    for path in ("/predict", "/feedback", "/admin/reload", "/admin/rollback"):
        answer = post(server, path, body, {**JSON, **AUTH})
        assert answer.status_code == 413, (path, answer.status_code)
        assert "SELFHEAL_MAX_BODY_BYTES" in answer.json()["detail"]


@pytest.mark.parametrize("label", [7, -1, 0.5])
def test_a_label_the_model_cannot_have_given_is_422_naming_the_field(server: LiveServer, label: float) -> None:
    one = post(server, "/feedback", b'{"request_id": "a1", "label": %s}' % str(label).encode())
    assert one.status_code == 422, one.text
    assert one.json()["detail"][0]["loc"] == ["body", "label"]
    assert "expected one of 0, 1" in one.json()["detail"][0]["msg"]
    listed = post(
        server,
        "/feedback",
        b'[{"request_id": "a1", "label": 1}, {"request_id": "a2", "label": %s}]' % str(label).encode(),
    )
    assert listed.status_code == 422
    assert [e["loc"] for e in listed.json()["detail"]] == [["body", 1, "label"]]
    assert post(server, "/feedback", b'{"request_id": "a1", "label": 1}').status_code == 202


def test_more_labels_than_the_queue_holds_is_422_not_queue_full(server: LiveServer) -> None:
    """A request that can never be queued must not be told to retry (d5107c0: 503 'queue full')."""
    body = b"[" + b",".join([b'{"request_id":"r","label":0}'] * (QUEUE_ROWS + 1)) + b"]"
    assert len(body) < LIMIT
    answer = post(server, "/feedback", body)
    assert answer.status_code == 422, answer.text[:300]
    assert f"1 to {FEEDBACK_LIMIT} labels, got {QUEUE_ROWS + 1}" in answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"request_id": "a1", "label": NaN}', "label"),
        (b'{"request_id": "a1", "label": Infinity}', "label"),
        (b'{"request_id": "a1", "label": 1e400}', "label"),
        (b'{"request_id": "\\ud800", "label": 1}', "request_id"),
        (b'[{"request_id": "a1", "label": -Infinity}]', "label"),
    ],
    ids=["nan", "infinity", "huge", "lone-surrogate", "list-infinity"],
)
def test_a_malformed_feedback_body_is_422_not_500(server: LiveServer, body: bytes, field: str) -> None:
    answer = post(server, "/feedback", body)
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["detail"][0]["loc"][-1] == field


def test_an_integer_beyond_int64_is_422_not_a_rounded_prediction(server: LiveServer, model_store: ModelStore) -> None:
    """The JSON parser hands an integer beyond int64 over as a float; it was rounded and answered (200)."""
    record = {**model_store.records(1)[0], "visits": -(2**63) - 1}
    answer = post(server, "/predict", json.dumps({"dataframe_records": [record]}).encode())
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["detail"][0]["loc"] == ["body", "dataframe_records", 0, "visits"]


def test_feedback_names_unknown_fields_and_admin_names_a_bad_version(server: LiveServer) -> None:
    extra = post(server, "/feedback", b'{"request_id": "a1", "label": 1, "lable": 0}')
    assert extra.status_code == 422
    assert ["body", "lable"] in [e["loc"] for e in extra.json()["detail"]]
    bad = post(server, "/admin/rollback", b'{"version": ""}', {**JSON, **AUTH})
    assert bad.status_code == 422  # d5107c0: 200, rolled back to @previous
    assert bad.json()["detail"][0]["loc"] == ["body", "version"]


# -- schemathesis: the server's own OpenAPI document, every check --------------------------------------
def _all_checks() -> list[Any]:
    load_all_checks()
    return [check for check in CHECKS.get_all() if not is_check_class(check)]


def _assert_fuzzed(server: LiveServer, source: str, counts: Counter[int], floor: int) -> None:
    """One fuzzing test's totals: enough requests, no 5xx, the same worker processes as at the start."""
    print(f"\n{source}: {sum(counts.values())} requests, status counts {dict(sorted(counts.items()))}")
    assert not {status: n for status, n in counts.items() if status >= 500}, counts
    assert sum(counts.values()) >= floor, counts
    assert sorted(server.worker_pids()) == server.started_pids  # type: ignore[attr-defined]


def test_schemathesis_every_check_on_every_operation(server: LiveServer) -> None:
    """schemathesis against the server's own OpenAPI document, every check on every answer."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = _all_checks()
    counts: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, [op.label for op in operations]
    for operation in operations:

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=st.one_of([operation.as_strategy(mode) for mode in GenerationMode]))
        def fuzz(case: Any) -> None:
            response = case.call(base_url=server.url, headers=AUTH, timeout=60)
            counts[response.status_code] += 1
            case.validate_response(response, checks=checks, headers=AUTH)
            assert response.status_code < 500, (case.operation.label, response.text[:300])

        fuzz()
    _assert_fuzzed(server, "schemathesis", counts, floor=500)


# -- hypothesis: bodies, content types and bytes the schema does not describe -----------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def _field_values() -> st.SearchStrategy[Any]:
    big = st.integers(min_value=-(10**40), max_value=10**40)
    return JSON_VALUES | big | st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1])


@st.composite
def feedback_bodies(draw: st.DrawFn) -> Any:
    item = st.fixed_dictionaries(
        {},
        optional={"request_id": st.text(max_size=20) | _field_values(), "label": _field_values(), "x": _field_values()},
    )
    return draw(item | st.lists(item, max_size=4) | JSON_VALUES)


@st.composite
def predict_bodies(draw: st.DrawFn, record: dict[str, Any]) -> Any:
    keys = st.sampled_from([*record, "unknown", ""])
    changed = draw(st.dictionaries(keys, _field_values(), max_size=3))
    dropped = draw(st.sets(st.sampled_from(list(record)), max_size=2))
    one = {k: v for k, v in {**record, **changed}.items() if k not in dropped}
    return draw(st.sampled_from([one, [one], {"dataframe_records": [one]}, [one, 7]]) | JSON_VALUES)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


RAW = st.binary(max_size=200) | st.sampled_from([b"", b"[" * 50_000, b'{"a":' * 5000, b"\xff\xfe\x00", b"null"])
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "", "a/b;c"])


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as shared:
        yield shared


def test_hypothesis_bodies(server: LiveServer, model_store: ModelStore, client: httpx.Client) -> None:
    """Bodies, content types and bytes the schema does not describe, each sent three ways."""
    record = model_store.records(1)[0]
    counts: Counter[int] = Counter()

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(["/predict", "/feedback", "/admin/rollback", "/admin/reload"]))
        if path == "/predict":
            body = data.draw(predict_bodies(record).map(_encode) | RAW)
        else:
            body = data.draw(feedback_bodies().map(_encode) | RAW)
        headers = {"content-type": data.draw(CONTENT_TYPES), **AUTH}
        answers = [client.post(f"{server.url}{path}", content=body, headers=headers)]
        answers.append(client.post(f"{server.url}{path}", content=body, headers={**headers, **JSON}))
        # Chunked (no Content-Length): the limit is counted, not declared.
        answers.append(client.post(f"{server.url}{path}", content=iter([body]), headers={**headers, **JSON}))
        for answer in answers:
            counts[answer.status_code] += 1
            assert answer.status_code < 500, (path, body[:200], answer.text[:300])

    fuzz()
    _assert_fuzzed(server, "hypothesis", counts, floor=1500)


def test_an_endless_chunked_body_is_cut_at_the_limit_and_the_server_goes_on(server: LiveServer) -> None:
    """A chunked body that never ends is cut once it passes the limit (read through a raw socket)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        head = b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 65536
        answer = b""
        for _ in range(LIMIT // len(chunk) + 50):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
        sock.settimeout(30)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert post(server, "/feedback", b'{"request_id": "a1", "label": 0}').status_code == 202
