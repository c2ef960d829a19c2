"""The model a batch is scored with: the registry's ``@champion``, loaded and checked as the server loads it.

Health-gated: a champion whose latest golden replay failed (the live server answered its
golden set otherwise than the registered artifact did at promotion: ``flows.healer.golden``)
scores nothing until a replay passes again or the healer has replaced it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError
from checkpoints.golden import latest_probe
from flows.registry import CHAMPION, Registry

if TYPE_CHECKING:
    from flows.config import SelfhealConfig
    from serving.model import LoadedModel

logger = logging.getLogger(__name__)


class NoChampion(SelfhealError):
    """The registry has no ``@champion`` to score with."""


class UnhealthyChampion(SelfhealError):
    """The ``@champion``'s latest golden replay failed: it is not scored with."""


def load_champion(cfg: SelfhealConfig) -> LoadedModel:
    """The ``@champion`` of ``cfg.model_name``, loaded as the server loads it (reviewed types, its own warm-up).

    Raises:
        NoChampion: no version holds the alias.
        UnhealthyChampion: its latest golden replay failed.
        ModelRefused: its artifacts are outside the registry's root, or not skops with reviewed types.
        ModelLoadFailed: it cannot be downloaded, read or warmed up.
        RegistryUnavailable: the tracking store does not answer.
    """
    from serving.model import LoadedModel, ModelThreads  # MLflow's model metadata and scikit-learn: when scoring

    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        raise NoChampion(
            f"model {cfg.model_name!r} has no @{CHAMPION} in {cfg.tracking_uri}: "
            "train one first (`selfheal pipeline run`)"
        )
    probe = latest_probe(Lake(cfg.lake.root, cfg.lake.storage_options or None), champion.version)
    if probe is not None and not probe.passed:
        raise UnhealthyChampion(
            f"refusing to score with {cfg.model_name} v{champion.version} (@{CHAMPION}): its golden replay failed "
            f"at {probe.probed_at.isoformat()} ({probe.detail}); the healer repairs or replaces it "
            "(`selfheal incidents`), or a passing replay clears it"
        )
    model = LoadedModel.load(registry, champion, ModelThreads(per_call=1, pool=1), cfg.trainer.trusted_types)
    logger.info("scoring with %s v%s (@%s)", cfg.model_name, model.version, CHAMPION)
    return model
