"""The model registry (MLflow) as the pipeline uses it: promotion, rollback, lineage look-ups.

Aliases, not stages: ``champion`` serves, ``previous`` is the fallback and the
rollback target, ``challenger`` is a model waiting on the gate. The client, its
retry rule (tenacity, client-side, transient errors only) and the names of the
aliases and tags are ``serving.registry``'s, shared with the server and the chaos
extension; pipeline steps are retried by Prefect, never both on one call.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TypeVar

from checkpoints.exceptions import RegistryUnavailable
from serving.registry import (
    CHALLENGER,
    CHAMPION,
    LIGHT,
    PREVIOUS,
    PROMOTED_AT_TAG,
    ModelNotFound,
    ModelRegistry,
    ModelVersionRef,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "LIGHT",
    "PREVIOUS",
    "PROMOTED_AT_TAG",
    "ModelNotFound",
    "ModelRecord",
    "Registry",
    "STORE_ANSWER_SECONDS",
    "run_metrics",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: How long a loop that must keep going (the healer's tick, the monitor) waits for a registry read.
STORE_ANSWER_SECONDS = 3.0

#: One registered model version as the pipeline sees it.
ModelRecord = ModelVersionRef


def run_metrics(registry: ModelRegistry, run_id: str) -> dict[str, float]:
    """A run's metrics, each its latest value (what MLflow's ``get_run(run_id).data.metrics`` gives).

    Read without MLflow (its import is seconds; a monitor pass needs only this) when the
    runs live where ``registry``'s light reader reads: the embedded ``sqlite:///`` store
    (MLflow's ``runs`` and ``latest_metrics`` tables) or an ``http(s)://`` server
    (``runs/get``). Any other store goes through MLflow.

    Raises:
        ModelNotFound: there is no such run.
        RegistryUnavailable: the store did not answer after the retries.
    """
    what = f"read run {run_id}"
    if registry.light is None or registry.registry_uri != registry.tracking_uri:
        return dict(registry.call(what, lambda c: c.get_run(run_id)).data.metrics)
    found = registry.read(what, lambda reads: reads.run_metrics(run_id))
    if found is None:
        raise ModelNotFound(f"run {run_id} does not exist")
    return found


class Registry(ModelRegistry):
    """Aliases and lineage for one registered model.

    Example:
        >>> reg = Registry("sqlite:///.selfheal/mlflow.db", "fraud-detector")
        >>> reg.promote("7")   # champion -> previous, 7 -> champion
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        artifact_root: str | None = None,
        read_seconds: float | None = None,
    ) -> None:
        # A flow step can wait longer for the store than a server request can.
        super().__init__(
            model_name,
            tracking_uri=tracking_uri,
            attempts=4,
            wait_max_seconds=3.0,
            artifact_root=artifact_root,
            read_seconds=read_seconds,
        )

    def find_by_tag(self, key: str, value: str) -> ModelRecord | None:
        """The newest version tagged ``key=value`` (e.g. a training cache key)."""
        found = self.versions(f"tags.`{key}` = '{value}'")
        return max(found, key=lambda mv: int(mv.version)) if found else None

    def aliases(self) -> dict[str, ModelRecord | None]:
        """champion, challenger and previous, each with its version or None."""
        return {alias: self.by_alias(alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)}

    def promote(self, version: str) -> ModelRecord | None:
        """Make ``version`` champion; the old champion becomes ``previous``. Returns the old champion."""
        old = self.by_alias(CHAMPION)
        if old is not None and old.version == version:
            return old
        # The tag first: what reads "the version promoted last" (flows.gitops) never sees the alias ahead of it.
        self.set_tag(version, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        if old is not None:
            self.set_alias(PREVIOUS, old.version)
        self.set_alias(CHAMPION, version)
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
        self.set_tag(previous.version, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        self.set_alias(CHAMPION, previous.version)
        self.set_alias(PREVIOUS, champion.version)
        return champion.version, previous.version

    def promoted_at(self) -> datetime | None:
        """When the current champion was promoted, if recorded."""
        champion = self.by_alias(CHAMPION)
        stamp = champion.tags.get(PROMOTED_AT_TAG) if champion else None
        return datetime.fromisoformat(stamp) if stamp else None
