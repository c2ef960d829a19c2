"""The model server from the outside: one HTTP client for its probes, metrics and admin calls.

Everything that talks to a running server (the pipeline, the healer, the monitor,
the local stack, the demo, the chaos extension) goes through ``ServingClient``:
the base URL and the admin token (``SELFHEAL_ADMIN_TOKEN``, read once) live here,
and so do the retries of ``reload`` (tenacity, inside the client, never around it).

Example:
    >>> server = ServingClient("http://127.0.0.1:8080")
    >>> server.wait_ready(timeout=60)["model_version"]
    '7'
    >>> server.reload()
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
    wait_fixed,
)

from checkpoints.exceptions import ServingUnavailable

logger = logging.getLogger(__name__)

#: The environment variable holding the admin token; the server disables /admin without it.
ADMIN_TOKEN_ENV = "SELFHEAL_ADMIN_TOKEN"


def _reload_again(exc: BaseException) -> bool:
    """Retry a reload the server did not get (cannot connect) or failed at (5xx); not a timeout, not a 4xx.

    A timed-out reload may still be running: asking again would load the model twice.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError)


def _seen(what: str, exc: httpx.HTTPError) -> str:
    return f"{what}: {type(exc).__name__}: {exc}"


def _object(what: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object ``response`` holds; ServingUnavailable, naming ``what``, when it holds none."""
    try:
        body = response.json()
    except ValueError as exc:
        raise ServingUnavailable(f"{what}: {response.status_code} without a JSON body: {response.text[:200]}") from exc
    if not isinstance(body, dict):
        raise ServingUnavailable(f"{what}: {response.status_code} with {type(body).__name__}, not an object")
    return body


class ServingClient:
    """One model server, by its base URL.

    No keep-alive: a pooled connection to a worker that was just killed would fail the
    next probe and read as an outage. One ``httpx.Client`` per instance all the same:
    ``httpx.get`` builds an SSL context (~70 ms of CA loading) on every call.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080`` (a trailing ``/`` or ``/metrics`` is dropped).
        admin_token: the bearer token for /admin; by default ``SELFHEAL_ADMIN_TOKEN``.
        reload_attempts: how many times ``reload`` asks before giving up.
        transport: an httpx transport in place of the network (tests: ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str | None = None,
        reload_attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/metrics")
        self.admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV)
        self._reload_attempts = reload_attempts
        self._http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get(self, path: str, timeout: float) -> httpx.Response:
        """GET ``path``; ServingUnavailable (saying what was seen) unless it answers 200."""
        try:
            response = self._http.get(f"{self.base_url}{path}", timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(_seen(f"GET {path}", exc)) from exc
        if response.status_code != 200:
            raise ServingUnavailable(f"GET {path}: {response.status_code} {response.text[:200]}")
        return response

    def _json(self, path: str, timeout: float) -> dict[str, Any]:
        return _object(f"GET {path}", self._get(path, timeout))

    def ready(self, timeout: float = 2.0) -> dict[str, Any]:
        """The /ready body (``model_version``, ``fallback_version``, ...) of a server that can serve.

        Raises:
            ServingUnavailable: it does not answer, or is not ready (no model yet).
        """
        return self._json("/ready", timeout)

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """The /health body of the worker that answered (``pid``, ...): alive, model or not.

        Raises:
            ServingUnavailable: it does not answer 200.
        """
        return self._json("/health", timeout)

    def feature_names(self, timeout: float = 10.0) -> list[str]:
        """The model's input columns, from the record schema in the server's OpenAPI document.

        Raises:
            ServingUnavailable: it does not answer, or its schema names no record fields yet.
        """
        doc = self._json("/openapi.json", timeout)
        record = doc.get("components", {}).get("schemas", {}).get("Record", {})
        properties = record.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise ServingUnavailable(f"{self.base_url}/openapi.json names no record fields")
        return list(properties)

    def metrics(self, timeout: float = 2.0) -> str:
        """The Prometheus text of GET /metrics.

        Raises:
            ServingUnavailable: it does not answer 200 (the message names the URL).
        """
        target = f"{self.base_url}/metrics"
        try:
            response = self._http.get(target, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(_seen(target, exc)) from exc
        if response.status_code != 200:
            raise ServingUnavailable(f"{target}: HTTP {response.status_code}")
        return response.text

    def predict(
        self, records: list[dict[str, Any]], timeout: float = 10.0, request_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST ``records`` to /predict (as ``X-Request-ID: request_id`` when given): (status code, JSON body).

        A 422's body names the fields the model refused.

        Raises:
            ServingUnavailable: it does not answer, or answers without a JSON object.
        """
        headers = {"X-Request-ID": request_id} if request_id else None
        try:
            response = self._http.post(f"{self.base_url}/predict", json=records, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(_seen("POST /predict", exc)) from exc
        return response.status_code, _object("POST /predict", response)

    def reload(self, timeout: float = 30.0) -> bool:
        """Ask the server to re-read the registry now (POST /admin/reload); False, logged, when it cannot be asked.

        Without an admin token nothing is sent: the server polls the registry anyway.
        """
        if not self.admin_token:
            logger.info("no %s: the server at %s will see the change on its next poll", ADMIN_TOKEN_ENV, self.base_url)
            return False
        headers = {"Authorization": f"Bearer {self.admin_token}"}

        def post() -> None:
            self._http.post(f"{self.base_url}/admin/reload", headers=headers, timeout=timeout).raise_for_status()

        retrying = Retrying(
            retry=retry_if_exception(_reload_again),
            stop=stop_after_attempt(self._reload_attempts),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        )
        try:
            retrying(post)
        except httpx.HTTPError as exc:
            logger.warning("could not tell the server at %s to reload: %s", self.base_url, exc)
            return False
        return True

    def wait_ready(
        self, timeout: float, interval: float = 0.5, alive: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Poll /ready until it answers 200 (a model is loaded); its body.

        Args:
            timeout: seconds to wait at most.
            interval: seconds between looks.
            alive: whether the server's process still runs (stop waiting when it exited).

        Raises:
            ServingUnavailable: not ready in time (or the process exited), with what was seen last.
        """
        return self._wait(self.ready, timeout, interval, alive)

    def wait_healthy(
        self, timeout: float, interval: float = 0.25, alive: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Poll /health until it answers 200 (up, with or without a model yet); its body. As ``wait_ready``."""
        return self._wait(self.health, timeout, interval, alive)

    def _wait(
        self,
        probe: Callable[[float], dict[str, Any]],
        timeout: float,
        interval: float,
        alive: Callable[[], bool] | None,
    ) -> dict[str, Any]:
        def look() -> dict[str, Any]:
            if alive is not None and not alive():
                raise _Exited(f"the server process exited before {self.base_url} answered")
            return probe(min(2.0, max(0.2, timeout)))

        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, ServingUnavailable) and not isinstance(exc, _Exited)),
            stop=stop_after_delay(timeout),
            wait=wait_fixed(interval),
            reraise=True,
        )
        try:
            return retrying(look)
        except _Exited:
            raise
        except ServingUnavailable as exc:
            raise ServingUnavailable(f"{self.base_url} did not answer within {timeout:g}s: {exc}") from exc


class _Exited(ServingUnavailable):
    """The server's process exited while it was awaited: waiting longer will not help."""
