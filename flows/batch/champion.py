"""The models a batch is scored with: the registry's ``@champion``, loaded and checked as the server loads it,
and the fallback chain behind it (``load_chain``: ``@previous`` and the baseline, as the server holds them).

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
from flows.registry import CHAMPION, PREVIOUS, Registry

if TYPE_CHECKING:
    from flows.batch.chain import ScoringChain
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
    from flows.batch.chain import BATCH_THREADS  # the server's model code: when scoring
    from serving.model import LoadedModel

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
    model = LoadedModel.load(registry, champion, BATCH_THREADS, cfg.trainer.trusted_types)
    logger.info("scoring with %s v%s (@%s)", cfg.model_name, model.version, CHAMPION)
    return model


def load_chain(cfg: SelfhealConfig) -> ScoringChain:
    """The ``@champion`` (``load_champion``), then ``@previous``, then the baseline: the server's fallback chain.

    The fallback and the baseline are what the server would hold (``serving.reload``): a
    ``@previous`` that cannot be loaded, or a baseline that cannot be derived, leaves that
    link out with a warning (the champion still scores). The caller closes the chain.

    Raises:
        as ``load_champion``.
    """
    from flows.batch.chain import BATCH_THREADS, ScoringChain  # the server's predictor and model set: when scoring
    from serving.model import Baseline, LoadedModel
    from serving.registry import ModelLoadFailed, ModelRefused
    from serving.reload import ModelSet

    champion = load_champion(cfg)
    registry = Registry(cfg.tracking_uri, cfg.model_name, artifact_root=cfg.artifact_root)
    fallback: LoadedModel | None = None
    previous = registry.by_alias(PREVIOUS)
    if previous is not None and previous.version != champion.version:
        try:
            fallback = LoadedModel.load(registry, previous, BATCH_THREADS, cfg.trainer.trusted_types)
        except (ModelLoadFailed, ModelRefused) as exc:
            logger.warning("no fallback for batch scoring: @%s v%s: %s", PREVIOUS, previous.version, exc)
    try:
        baseline = Baseline.from_model(champion)
    except Exception as exc:  # noqa: BLE001 - it runs the model's own code; the chain scores without a baseline
        logger.warning("no baseline for batch scoring from v%s: %s: %s", champion.version, type(exc).__name__, exc)
        baseline = None
    chain = ScoringChain(ModelSet(primary=champion, fallback=fallback, baseline=baseline))
    logger.info(
        "fallback chain: v%s (@%s), %s, %s",
        champion.version,
        CHAMPION,
        f"v{fallback.version} (@{PREVIOUS})" if fallback else f"no @{PREVIOUS}",
        f"baseline from v{baseline.version}" if baseline else "no baseline",
    )
    return chain
