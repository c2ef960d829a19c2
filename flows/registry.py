"""The model registry (MLflow) as the pipeline uses it: aliases, lineage tags, lookups.

Aliases, not stages: ``champion`` serves, ``previous`` is the fallback and the
rollback target, ``challenger`` is a model waiting on the gate. Calls to the
tracking store are retried by tenacity here (client-side, transient errors
only); pipeline steps are retried by Prefect, never both on one call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from checkpoints.exceptions import RegistryUnavailable

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS, LIGHT = "champion", "challenger", "previous", "light"
#: When a version last became champion (ISO 8601, UTC); diagnosis uses it to spot bad deploys.
PROMOTED_AT_TAG = "selfheal.promoted_at"
T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "")
        return code in {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential_jitter(initial=0.2, max=3.0),
    reraise=True,
)


@dataclass(frozen=True)
class ModelRecord:
    """One registered model version as the pipeline sees it."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """Aliases and lineage for one registered model.

    Example:
        >>> reg = Registry("sqlite:///.selfheal/mlflow.db", "fraud-detector")
        >>> reg.promote("7")   # champion -> previous, 7 -> champion
    """

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return _retry(fn)()
        except MlflowException as exc:
            if _transient(exc):
                raise RegistryUnavailable(f"tracking store {self.tracking_uri}: {what} failed: {exc}") from exc
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise RegistryUnavailable(f"tracking store {self.tracking_uri}: {what} failed: {exc}") from exc

    def _record(self, mv: Any) -> ModelRecord:
        return ModelRecord(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            tags=dict(mv.tags or {}),
            aliases=tuple(getattr(mv, "aliases", ()) or ()),
        )

    def by_alias(self, alias: str) -> ModelRecord | None:
        """The version behind ``alias``, or None when the alias (or model) does not exist."""

        def get() -> ModelRecord | None:
            try:
                return self._record(self.client.get_model_version_by_alias(self.model_name, alias))
            except MlflowException as exc:
                if getattr(exc, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                    return None
                raise

        return self._call(f"get alias {alias}", get)

    def version(self, version: str) -> ModelRecord:
        return self._call(
            f"get version {version}", lambda: self._record(self.client.get_model_version(self.model_name, version))
        )

    def find_by_tag(self, key: str, value: str) -> ModelRecord | None:
        """The newest version tagged ``key=value`` (e.g. a training cache key)."""

        def search() -> ModelRecord | None:
            try:
                found = self.client.search_model_versions(f"name = '{self.model_name}' and tags.`{key}` = '{value}'")
            except MlflowException as exc:
                if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            if not found:
                return None
            return self._record(max(found, key=lambda mv: int(mv.version)))

        return self._call("search versions", search)

    def set_alias(self, alias: str, version: str) -> None:
        self._call(
            f"set alias {alias}", lambda: self.client.set_registered_model_alias(self.model_name, alias, version)
        )

    def delete_alias(self, alias: str) -> None:
        def delete() -> None:
            try:
                self.client.delete_registered_model_alias(self.model_name, alias)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise

        self._call(f"delete alias {alias}", delete)

    def set_tag(self, version: str, key: str, value: str) -> None:
        self._call(
            f"tag version {version}",
            lambda: self.client.set_model_version_tag(self.model_name, version, key, value),
        )

    def model_tag(self, key: str) -> str | None:
        """A tag of the registered model itself (not of a version); None when unset or no such model."""

        def get() -> str | None:
            try:
                return (self.client.get_registered_model(self.model_name).tags or {}).get(key)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

        return self._call(f"get model tag {key}", get)

    def set_model_tag(self, key: str, value: str) -> None:
        self._call(f"set model tag {key}", lambda: self.client.set_registered_model_tag(self.model_name, key, value))

    def delete_version(self, version: str) -> None:
        self._call(f"delete version {version}", lambda: self.client.delete_model_version(self.model_name, version))

    def aliases(self) -> dict[str, ModelRecord | None]:
        """champion, challenger and previous, each with its version or None."""
        return {alias: self.by_alias(alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)}

    def promote(self, version: str) -> ModelRecord | None:
        """Make ``version`` champion; the old champion becomes ``previous``. Returns the old champion."""
        old = self.by_alias(CHAMPION)
        if old is not None and old.version == version:
            return old
        if old is not None:
            self.set_alias(PREVIOUS, old.version)
        self.set_alias(CHAMPION, version)
        self.set_tag(version, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.delete_alias(CHALLENGER)
        logger.info("model %s: version %s is champion (previous: %s)", self.model_name, version, old and old.version)
        return old

    def rollback(self) -> tuple[str, str]:
        """champion <- previous, previous <- the old champion. Returns (old champion, new champion).

        Raises:
            RegistryUnavailable: there is no ``previous`` version to roll back to.
        """
        champion, previous = self.by_alias(CHAMPION), self.by_alias(PREVIOUS)
        if champion is None or previous is None:
            raise RegistryUnavailable(f"model {self.model_name}: no previous version to roll back to")
        self.set_alias(CHAMPION, previous.version)
        self.set_alias(PREVIOUS, champion.version)
        self.set_tag(previous.version, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        return champion.version, previous.version

    def promoted_at(self) -> datetime | None:
        """When the current champion was promoted, if recorded."""
        champion = self.by_alias(CHAMPION)
        stamp = champion.tags.get(PROMOTED_AT_TAG) if champion else None
        return datetime.fromisoformat(stamp) if stamp else None
