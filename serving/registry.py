"""The MLflow model registry as the server sees it: aliases, versions, downloads.

Retries live here, inside the client (tenacity), never around it: a transient
registry error (database locked, connection refused) is retried a few times,
then translated once into ``RegistryUnavailable``. "No such alias / model" is an
answer (None), not an error.

Example:
    >>> registry = ModelRegistry("fraud-detector", tracking_uri="sqlite:///mlflow.db")
    >>> ref = registry.by_alias("champion")
    >>> path = registry.download(ref, into="/tmp/x")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from checkpoints.exceptions import RegistryUnavailable, SelfhealError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: MLflow error codes that are answers ("not there"), not outages.
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class ModelLoadFailed(SelfhealError):
    """A registered version could not be downloaded, loaded or warmed up; the old model keeps serving.

    Attributes:
        version: the version that failed.
    """

    def __init__(self, name: str, version: str, detail: str) -> None:
        self.version = version
        super().__init__(f"version {version} of model {name!r} could not be loaded: {detail}")


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version.

    Attributes:
        name: registered model name.
        version: version number, as MLflow spells it (a string).
        tags: the version's tags (lineage, ``selfheal.baseline``).
    """

    name: str
    version: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _NOT_FOUND


def _is_transient(exc: BaseException) -> bool:
    return not _is_not_found(exc) and not isinstance(exc, (ValueError, TypeError))


class ModelRegistry:
    """Registry look-ups and downloads for one registered model name."""

    def __init__(
        self,
        model_name: str,
        *,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        attempts: int = 3,
        wait_max_seconds: float = 2.0,
    ) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._attempts = attempts
        self._wait_max = wait_max_seconds
        self._client: Any = None

    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=self._wait_max),
            reraise=True,
            before_sleep=lambda state: logger.warning(
                "registry %s failed (attempt %d), retrying: %s",
                what,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        try:
            return retrying(call)
        except Exception as exc:
            if _is_not_found(exc):
                raise
            raise RegistryUnavailable(
                f"MLflow registry at {self.registry_uri or 'the default URI'} did not answer ({what}): {exc}"
            ) from exc

    def by_alias(self, alias: str) -> ModelVersionRef | None:
        """The version holding ``alias``, or None when the model or the alias does not exist.

        Raises:
            RegistryUnavailable: the registry could not be reached after retries.
        """

        def call() -> ModelVersionRef:
            mv = self._mlflow_client().get_model_version_by_alias(self.model_name, alias)
            return ModelVersionRef(self.model_name, str(mv.version), dict(mv.tags or {}))

        try:
            return self._retrying(f"alias {alias!r}", call)
        except RegistryUnavailable:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    def by_version(self, version: str) -> ModelVersionRef | None:
        """Version ``version`` of the model, or None when it does not exist."""

        def call() -> ModelVersionRef:
            mv = self._mlflow_client().get_model_version(self.model_name, version)
            return ModelVersionRef(self.model_name, str(mv.version), dict(mv.tags or {}))

        try:
            return self._retrying(f"version {version}", call)
        except RegistryUnavailable:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    def model_tags(self) -> dict[str, str]:
        """The registered model's own tags (the release state lives there); empty when the model does not exist."""

        def call() -> dict[str, str]:
            return dict(self._mlflow_client().get_registered_model(self.model_name).tags or {})

        try:
            return self._retrying("registered model tags", call)
        except RegistryUnavailable:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                return {}
            raise

    def download(self, ref: ModelVersionRef, into: str) -> str:
        """Download the version's artifacts into the folder ``into`` and return the model's local path.

        Raises:
            ModelLoadFailed: the artifacts are missing or unreadable.
        """
        import mlflow.artifacts

        def call() -> str:
            # The version's own artifact location: resolving a models:/ URI would go through the
            # process-wide registry URI, which this client must not change.
            source = self._mlflow_client().get_model_version_download_uri(ref.name, ref.version)
            return str(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=into, tracking_uri=self.tracking_uri)
            )

        try:
            return self._retrying(f"download of version {ref.version}", call)
        except Exception as exc:
            raise ModelLoadFailed(ref.name, ref.version, f"artifacts could not be downloaded: {exc}") from exc
