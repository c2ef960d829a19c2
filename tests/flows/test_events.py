"""flows.events: one best-effort Prefect event, the shape triggers match, never an exception."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.exceptions import EventTooLarge
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import events


@pytest.fixture
def prefect_api() -> Iterator[None]:
    """A configured API (nothing listens: ``emit_event`` is replaced in these tests)."""
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        yield


@pytest.mark.usefixtures("prefect_api")
def test_the_event_carries_its_resource_labels_and_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: sent.append(kwargs) or object())
    assert events.emit(
        "selfheal.signal.data_drift", "selfheal.signal.data_drift", {"score": 0.3}, labels={"selfheal.severity": "high"}
    )
    assert sent == [
        {
            "event": "selfheal.signal.data_drift",
            "resource": {"prefect.resource.id": "selfheal.signal.data_drift", "selfheal.severity": "high"},
            "payload": {"score": 0.3},
            "related": None,
        }
    ]


@pytest.mark.usefixtures("prefect_api")
def test_events_off_is_not_a_failure(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: None)  # what emit_event returns with no API
    with caplog.at_level(logging.DEBUG, logger="flows.events"):
        assert events.emit("selfheal.release.started", "selfheal.release.r-1", {}) is False
    assert caplog.records == []


@pytest.mark.usefixtures("prefect_api")
def test_a_failure_is_a_warning_once_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def too_large(**kwargs: Any) -> None:
        raise EventTooLarge(2_000_000, 1_500_000)

    monkeypatch.setattr(events, "emit_event", too_large)
    monkeypatch.setattr(events, "_warned", set())
    with caplog.at_level(logging.DEBUG, logger="flows.events"):
        assert events.emit("selfheal.incident.detected", "selfheal.incident.i-1", {"detail": "x" * 10}) is False
        assert events.emit("selfheal.incident.detected", "selfheal.incident.i-2", {}) is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]
    assert "selfheal.incident.detected not emitted (too large" in caplog.records[0].getMessage()


def test_without_an_api_no_event_is_sent_unless_a_local_server_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect would start its ephemeral server for the event: only ``--prefect`` (local_server_events) asks."""
    sent: list[str] = []
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: sent.append(kwargs["event"]) or object())
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert events.emit("selfheal.signal.data_drift", "selfheal.signal.data_drift", {}) is False
        assert sent == []
        with events.local_server_events():
            assert events.emit("selfheal.signal.data_drift", "selfheal.signal.data_drift", {}) is True
        assert events.emit("selfheal.signal.latency", "selfheal.signal.latency", {}) is False
    assert sent == ["selfheal.signal.data_drift"]
