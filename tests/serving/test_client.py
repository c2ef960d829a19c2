"""ServingClient against a fake server (httpx.MockTransport): what it sends, retries and raises."""

from __future__ import annotations

import time

import httpx
import pytest

from checkpoints.exceptions import ServingUnavailable
from serving.client import ServingClient

TOKEN = "t" * 32


def fake(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    """A server answering ``answers`` in order (the last one repeated), recording each request."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return httpx.MockTransport(handle)


def test_ready_returns_the_body_and_raises_with_what_was_seen_when_not_ready() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.Response(200, json={"model_version": "7"}), httpx.Response(503, json={"status": "not ready"})]
    client = ServingClient("http://server:1/", transport=fake(answers, seen))
    assert client.ready()["model_version"] == "7"
    with pytest.raises(ServingUnavailable, match="GET /ready: 503"):
        client.ready()
    assert [str(r.url) for r in seen] == ["http://server:1/ready"] * 2


def test_metrics_text_and_a_non_200_is_an_outage_naming_the_url() -> None:
    seen: list[httpx.Request] = []
    client = ServingClient(
        "http://server:1/metrics", transport=fake([httpx.Response(200, text="a 1\n"), httpx.Response(500)], seen)
    )
    assert client.metrics() == "a 1\n"
    with pytest.raises(ServingUnavailable, match=r"http://server:1/metrics: HTTP 500"):
        client.metrics()


def test_reload_sends_the_token_and_retries_a_5xx_not_a_4xx() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.Response(503), httpx.Response(200, json={})]
    assert ServingClient("http://server:1", admin_token=TOKEN, transport=fake(answers, seen)).reload()
    assert len(seen) == 2 and seen[0].method == "POST" and seen[0].url.path == "/admin/reload"
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"

    refused: list[httpx.Request] = []
    assert not ServingClient(
        "http://server:1", admin_token=TOKEN, transport=fake([httpx.Response(401)], refused)
    ).reload()
    assert len(refused) == 1


def test_reload_without_a_token_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFHEAL_ADMIN_TOKEN", raising=False)
    seen: list[httpx.Request] = []
    assert not ServingClient("http://server:1", transport=fake([httpx.Response(200)], seen)).reload()
    assert seen == []


def test_the_admin_token_is_read_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFHEAL_ADMIN_TOKEN", TOKEN)
    client = ServingClient("http://server:1")
    monkeypatch.delenv("SELFHEAL_ADMIN_TOKEN")
    assert client.admin_token == TOKEN


def test_wait_ready_polls_until_ready_and_gives_up_on_time_or_an_exited_process() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.Response(503), httpx.Response(503), httpx.Response(200, json={"model_version": "3"})]
    client = ServingClient("http://server:1", transport=fake(answers, seen))
    assert client.wait_ready(timeout=5, interval=0.01)["model_version"] == "3" and len(seen) == 3

    never = ServingClient("http://server:1", transport=fake([httpx.Response(503)], []))
    with pytest.raises(ServingUnavailable, match="did not answer within 0.2s: GET /ready: 503"):
        never.wait_ready(timeout=0.2, interval=0.05)
    started = time.monotonic()
    with pytest.raises(ServingUnavailable, match="process exited"):
        never.wait_ready(timeout=30, interval=0.05, alive=lambda: False)
    assert time.monotonic() - started < 5
