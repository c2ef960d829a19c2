"""The MLflow model registry: the one client every package uses, and the names of its aliases and tags.

One rule for errors, here at the boundary: a transient failure (connection
refused, a 5xx, SQLite's "database is locked") is retried a few times by
tenacity, inside the client and never around it, then translated into
``RegistryUnavailable``; a missing model, version or alias is ``ModelNotFound``
(or None from the look-ups, where "not there" is an answer). Any other error is
a bug and surfaces as itself.

Example:
    >>> registry = ModelRegistry("fraud-detector", tracking_uri="sqlite:///mlflow.db")
    >>> ref = registry.by_alias(CHAMPION)
    >>> path = registry.download(ref, into="/tmp/x")
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from checkpoints.exceptions import RegistryUnavailable, SelfhealError
from serving.registry_reads import LightReads, VersionRow
from serving.registry_reads import light_reads as light_reads_for

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- the registry's vocabulary (declared once; flows and chaos import these) ---------------
#: Aliases: ``champion`` serves, ``previous`` is the fallback and rollback target,
#: ``challenger`` waits on the gate, ``light`` is the small model for degraded serving.
CHAMPION, CHALLENGER, PREVIOUS, LIGHT = "champion", "challenger", "previous", "light"
#: Version tag: when a version last became champion (ISO 8601); diagnosis uses it to spot bad deploys.
PROMOTED_AT_TAG = "selfheal.promoted_at"
#: Version tag: the healer's idempotency key of the rollback that demoted the version.
ROLLED_BACK_BY_TAG = "selfheal.rolled_back_by"
#: Version tag: the pipeline's resume key (the inputs a version was trained on).
TRAIN_KEY_TAG = "selfheal.train_key"
#: Lineage version tags the pipeline writes and the monitor reads.
BRONZE_VERSION_TAG = "selfheal.bronze_version"
SILVER_VERSION_TAG = "selfheal.silver_version"
WINDOW_TAG = "selfheal.window_batches"
#: Version tag: ``{"prediction": 0, "score": 0.03}`` from the training labels (the monitor's baseline).
BASELINE_TAG = "selfheal.baseline"
#: Registered-model tag holding the release state (JSON).
RELEASE_TAG = "selfheal.release"
#: Model-version tag set on a challenger when its release ends (``promoted`` or ``rolled_back``).
OUTCOME_TAG = "selfheal.release.outcome"
#: Version tag on a model a chaos experiment registered (``bad_model``, ``worse_model``).
CHAOS_TAG = "selfheal.chaos"

#: MLflow error codes that mean "no such model, version or alias" (a missing alias is a bad parameter).
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class ModelNotFound(SelfhealError):
    """The registered model, version or alias asked for does not exist."""


class ModelLoadFailed(SelfhealError):
    """A registered version could not be downloaded, loaded or warmed up; the old model keeps serving.

    Attributes:
        version: the version that failed.
    """

    def __init__(self, name: str, version: str, detail: str) -> None:
        self.version = version
        super().__init__(f"version {version} of model {name!r} could not be loaded: {detail}")


class ModelRefused(ModelLoadFailed):
    """A registered version selfheal will not load; the old model keeps serving.

    Attributes:
        version: the version refused.
        reason: ``outside_root`` (its artifacts are not in the registry's artifact store),
            ``not_skops`` (pickle, cloudpickle: loading would run its code) or
            ``untrusted_types`` (skops with a type nobody reviewed).
    """

    def __init__(self, name: str, version: str, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(name, version, f"refused ({reason}): {detail}")


def _local_path(uri: str) -> Path | None:
    """The local path of a ``file:`` URI or a plain path; None for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
    return None


def outside_root(location: str, root: str) -> str | None:
    """Why ``location`` (a version's artifacts) is not inside the artifact store ``root``; None when it is.

    Local folders are compared after resolving symbolic links, and every file under the
    folder must resolve inside the root too (a link inside the store can point anywhere).
    Remote URIs must share the root's scheme and prefix and hold no ``..`` segment.

    Example:
        >>> outside_root("file:///tmp/x/model", "/srv/mlflow/artifacts")
        "file:///tmp/x/model is not under the artifact root /srv/mlflow/artifacts"
    """
    if not root:
        return f"no artifact root is configured (SELFHEAL_ARTIFACT_ROOT): {location} cannot be checked"
    here, base = _local_path(location), _local_path(root)
    refusal = f"{location} is not under the artifact root {root}"
    if here is None or base is None:
        if here is not None or base is not None:  # one local, one remote: never the same store
            return refusal
        inside = location.rstrip("/").startswith(root.rstrip("/") + "/") and "/../" not in f"{location}/"
        return None if inside else refusal
    real_base = base.resolve()
    if not here.resolve().is_relative_to(real_base):
        return refusal
    for file in here.rglob("*") if here.is_dir() else ():
        if not file.resolve().is_relative_to(real_base):
            return f"{file} (in {location}) resolves outside the artifact root {root}"
    return None


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version.

    Attributes:
        name: registered model name.
        version: version number, as MLflow spells it (a string).
        tags: the version's tags (lineage, ``selfheal.baseline``).
        run_id: the MLflow run that logged it, when known.
        aliases: the aliases that name it, when known.
    """

    name: str
    version: str
    tags: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _mlflow_exceptions() -> Any:
    """``mlflow.exceptions`` if MLflow is loaded, else None: an MLflow error cannot exist without it."""
    return sys.modules.get("mlflow.exceptions")


def _is_not_found(exc: BaseException) -> bool:
    errors = _mlflow_exceptions()
    return errors is not None and isinstance(exc, errors.MlflowException) and exc.error_code in _NOT_FOUND


def is_transient(exc: BaseException) -> bool:
    """Whether a registry call that raised ``exc`` may succeed if tried again.

    Connection and OS errors, MLflow's 5xx and rate-limit answers (its SQL store reports
    a locked database as ``TEMPORARILY_UNAVAILABLE``), and "database is locked" however
    it is wrapped.
    """
    errors = _mlflow_exceptions()
    if errors is not None and isinstance(exc, errors.MlflowException):
        status: int = errors.ERROR_CODE_TO_HTTP_STATUS.get(exc.error_code, 500)
        return status >= 500 or exc.error_code == "REQUEST_LIMIT_EXCEEDED"
    return isinstance(exc, OSError) or "database is locked" in str(exc)


def answer_within(seconds: float, what: str, read: Callable[[], T]) -> T:
    """``read()``, or RegistryUnavailable when it has not answered within ``seconds``.

    The call runs in a daemon thread that is abandoned (it ends on its own) when the
    time is up. Reads only: an abandoned write could still land.
    """
    answer: list[tuple[bool, Any]] = []

    def call() -> None:
        try:
            answer.append((True, read()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread below
            answer.append((False, exc))

    worker = threading.Thread(target=call, name=f"registry-read-{what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if not answer:
        # Not transient for the retry rule: each retry would wait out the same lock again.
        raise RegistryUnavailable(f"{what}: no answer from the registry within {seconds:g} s")
    ok, value = answer[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class ModelRegistry:
    """The registry, through one MLflow client, for one registered model name.

    Every call goes through ``call``: the one retry rule and the one translation of
    MLflow's errors. ``client`` is the raw MLflow client for the rare call not wrapped
    here (pass it to ``call`` so the rule still applies).

    Reads (``by_alias``, ``by_version``, ``version``, ``model_tags``, ``model_tag``) and a
    local version's ``download`` go through ``serving.registry_reads`` when the registry is a
    ``sqlite:///`` store or an ``http(s)://`` server (``light_reads=True``, the default):
    same answers and errors, no MLflow import. ``versions()`` and every write use MLflow.
    """

    def __init__(
        self,
        model_name: str,
        *,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        attempts: int = 3,
        wait_max_seconds: float = 2.0,
        artifact_root: str | None = None,
        read_seconds: float | None = None,
        light_reads: bool = True,
    ) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        #: ``download`` refuses versions whose artifacts live elsewhere (None: not checked, metadata-only callers).
        self.artifact_root = artifact_root
        self._attempts = attempts
        self._wait_max = wait_max_seconds
        #: A read that has not answered within this many seconds is abandoned (None: wait for it).
        self.read_seconds = read_seconds
        self._client: MlflowClient | None = None
        #: The MLflow-free reader (None: every read goes through MLflow).
        self.light: LightReads | None = light_reads_for(self.registry_uri) if light_reads else None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, made on first use (importing mlflow is slow)."""
        if self._client is None:
            from mlflow import MlflowClient  # why: mlflow takes seconds to import; not at module import

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def call(self, what: str, fn: Callable[[MlflowClient], T], *, wait: bool = False) -> T:
        """``fn(client)``, retried while it fails transiently; MLflow's errors translated.

        With ``read_seconds`` set, a call that has not answered in time is abandoned and not
        retried: a locked SQLite store blocks each call for MLflow's busy timeout (20 s), and a
        caller that must keep going (the healer's tick) cannot wait it out on every retry.
        ``wait`` calls are always waited for: writes (an abandoned one could still land) and
        downloads (they take as long as the artifacts).

        Raises:
            RegistryUnavailable: the store did not answer after the retries, or refused the call.
            ModelNotFound: the model, version or alias does not exist.
        """
        from mlflow.exceptions import MlflowException  # why local: mlflow is slow to import

        retrying = self._retrying(what)
        attempt = fn if wait or self.read_seconds is None else self._bounded(what, fn)
        try:
            return retrying(attempt, self.client)
        except MlflowException as exc:
            if _is_not_found(exc):
                raise ModelNotFound(f"model {self.model_name!r}: {what}: {exc.message}") from exc
            raise self._unavailable(what, exc) from exc
        except Exception as exc:
            if is_transient(exc):
                raise self._unavailable(what, exc) from exc
            raise

    def read(self, what: str, fn: Callable[[LightReads], T]) -> T:
        """``fn(self.light)`` under ``call``'s rule (retries, the ``read_seconds`` bound), without MLflow.

        Raises:
            RegistryUnavailable: the store did not answer after the retries.
        """
        light = self.light
        assert light is not None, "read() needs a light reader (sqlite:/// or http(s)://)"
        retrying = self._retrying(what)
        attempt: Callable[[LightReads], T] = (
            fn
            if self.read_seconds is None
            else (lambda reads: answer_within(float(self.read_seconds or 0), what, lambda: fn(reads)))
        )
        try:
            return retrying(attempt, light)
        except Exception as exc:
            if is_transient(exc):
                raise self._unavailable(what, exc) from exc
            raise

    def _retrying(self, what: str) -> Retrying:
        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(initial=0.2, max=self._wait_max),
            reraise=True,
            before_sleep=lambda state: logger.warning(
                "registry %s failed (attempt %d), retrying: %s",
                what,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        )

    def _bounded(self, what: str, fn: Callable[[MlflowClient], T]) -> Callable[[MlflowClient], T]:
        seconds = float(self.read_seconds or 0)
        return lambda client: answer_within(seconds, what, lambda: fn(client))

    def _unavailable(self, what: str, exc: Exception) -> RegistryUnavailable:
        where = self.registry_uri or "the default URI"
        return RegistryUnavailable(f"MLflow registry at {where} did not answer ({what}): {exc}")

    @staticmethod
    def _row_ref(row: VersionRow) -> ModelVersionRef:
        return ModelVersionRef(row.name, row.version, dict(row.tags), row.run_id, row.aliases)

    def _ref(self, mv: Any) -> ModelVersionRef:
        return ModelVersionRef(
            name=str(mv.name),
            version=str(mv.version),
            tags=dict(mv.tags or {}),
            run_id=mv.run_id,
            aliases=tuple(getattr(mv, "aliases", ()) or ()),
        )

    # -- reads -------------------------------------------------------------------------
    def by_alias(self, alias: str) -> ModelVersionRef | None:
        """The version holding ``alias``, or None when the model or the alias does not exist.

        Raises:
            RegistryUnavailable: the registry could not be reached after retries.
        """
        if self.light is not None:
            row = self.read(f"alias {alias!r}", lambda r: r.alias(self.model_name, alias))
            return None if row is None else self._row_ref(row)
        try:
            return self.call(
                f"alias {alias!r}", lambda c: self._ref(c.get_model_version_by_alias(self.model_name, alias))
            )
        except ModelNotFound:
            return None

    def by_version(self, version: str) -> ModelVersionRef | None:
        """Version ``version`` of the model, or None when it does not exist."""
        try:
            return self.version(version)
        except ModelNotFound:
            return None

    def version(self, version: str) -> ModelVersionRef:
        """Version ``version`` of the model.

        Raises:
            ModelNotFound: no such version.
        """
        if self.light is not None:
            row = self.read(f"version {version}", lambda r: r.version(self.model_name, str(version)))
            if row is None:
                raise ModelNotFound(f"model {self.model_name!r}: version {version} does not exist")
            return self._row_ref(row)
        return self.call(f"version {version}", lambda c: self._ref(c.get_model_version(self.model_name, version)))

    def versions(self, where: str = "") -> list[ModelVersionRef]:
        """Every version of the model (matching the MLflow filter ``where``, e.g. ``tags.`k` = 'v'``)."""
        query = f"name = '{self.model_name}'" + (f" and {where}" if where else "")
        try:
            found = self.call("search versions", lambda c: list(c.search_model_versions(query)))
        except ModelNotFound:
            return []
        return [self._ref(mv) for mv in found]

    def model_tags(self) -> dict[str, str]:
        """The registered model's own tags (the release state lives there); empty when the model does not exist."""
        if self.light is not None:
            return self.read("registered model tags", lambda r: r.model_tags(self.model_name)) or {}
        try:
            model = self.call("registered model tags", lambda c: c.get_registered_model(self.model_name))
        except ModelNotFound:
            return {}
        return dict(model.tags or {})

    def model_tag(self, key: str) -> str | None:
        """A tag of the registered model itself (not of a version); None when unset or no such model."""
        return self.model_tags().get(key)

    # -- writes ------------------------------------------------------------------------
    def set_alias(self, alias: str, version: str) -> None:
        self.call(
            f"set alias {alias}", lambda c: c.set_registered_model_alias(self.model_name, alias, version), wait=True
        )

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias``; nothing happens when it (or the model) does not exist."""
        try:
            self.call(
                f"delete alias {alias}", lambda c: c.delete_registered_model_alias(self.model_name, alias), wait=True
            )
        except ModelNotFound:
            pass

    def set_tag(self, version: str, key: str, value: str) -> None:
        """Tag one version of the model."""
        self.call(
            f"tag version {version}", lambda c: c.set_model_version_tag(self.model_name, version, key, value), wait=True
        )

    def delete_tag(self, version: str, key: str) -> None:
        """Remove one tag of one version (nothing when the version or the tag is gone)."""
        try:
            self.call(
                f"untag version {version}",
                lambda c: c.delete_model_version_tag(self.model_name, version, key),
                wait=True,
            )
        except ModelNotFound:
            pass

    def set_model_tag(self, key: str, value: str) -> None:
        self.call(f"set model tag {key}", lambda c: c.set_registered_model_tag(self.model_name, key, value), wait=True)

    def delete_version(self, version: str) -> None:
        self.call(f"delete version {version}", lambda c: c.delete_model_version(self.model_name, version), wait=True)

    def download(self, ref: ModelVersionRef, into: str) -> str:
        """Download the version's artifacts into the folder ``into`` and return the model's local path.

        Raises:
            ModelRefused: the artifacts live outside ``artifact_root`` (nothing is downloaded).
            ModelLoadFailed: the artifacts are missing or unreadable.
            RegistryUnavailable: the registry could not be reached after retries.
        """
        local = self._local_download(ref, into)
        if local is not None:
            return local
        import mlflow.artifacts  # why: mlflow takes seconds to import; not at module import

        def fetch(client: MlflowClient) -> str:
            # The version's own artifact location: resolving a models:/ URI would go through the
            # process-wide registry URI, which this client must not change.
            source = client.get_model_version_download_uri(ref.name, ref.version)
            if self.artifact_root is not None:
                why = outside_root(str(source), self.artifact_root)
                if why is not None:
                    raise ModelRefused(ref.name, ref.version, "outside_root", why)
            return str(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=into, tracking_uri=self.tracking_uri)
            )

        try:
            return self.call(f"download of version {ref.version}", fetch, wait=True)
        except (ModelNotFound, RegistryUnavailable) as exc:
            raise ModelLoadFailed(ref.name, ref.version, f"artifacts could not be downloaded: {exc}") from exc

    def source(self, ref: ModelVersionRef) -> str:
        """Where the version's artifacts live (its storage location), checked against ``artifact_root``.

        Raises:
            ModelRefused: the artifacts live outside ``artifact_root``.
            ModelLoadFailed: the version does not exist, or the registry could not be reached.
        """
        try:
            if self.light is not None:
                found = self.read(
                    f"artifacts of version {ref.version}", lambda r: r.download_uri(ref.name, ref.version)
                )
                if found is None:
                    raise ModelNotFound(f"model {ref.name!r}: version {ref.version} does not exist")
                source = found
            else:
                source = self.call(
                    f"artifacts of version {ref.version}",
                    lambda c: str(c.get_model_version_download_uri(ref.name, ref.version)),
                )
        except (ModelNotFound, RegistryUnavailable) as exc:
            raise ModelLoadFailed(ref.name, ref.version, f"artifacts could not be found: {exc}") from exc
        if self.artifact_root is not None:
            why = outside_root(source, self.artifact_root)
            if why is not None:
                raise ModelRefused(ref.name, ref.version, "outside_root", why)
        return source

    def _local_download(self, ref: ModelVersionRef, into: str) -> str | None:
        """The copy of a version whose artifacts are a local folder, made without MLflow; None for remote ones."""
        if self.light is None:
            return None
        source = self.source(ref)
        folder = _local_path(source)
        if folder is None:
            return None  # s3://, mlflow-artifacts:/ ...: MLflow's artifact repositories fetch those
        target = Path(into) / (folder.name or "model")
        try:
            shutil.copytree(folder, target, symlinks=False, dirs_exist_ok=True)
        except OSError as exc:
            raise ModelLoadFailed(ref.name, ref.version, f"artifacts could not be copied from {source}: {exc}") from exc
        return str(target)
