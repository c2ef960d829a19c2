"""Batch inference as a Prefect flow (the ``selfheal-batch-inference`` deployment, hourly).

The flow only wires ``flows.batch``'s functions as tasks: resolve the input (by default
the landing zone), load ``@champion`` and its fallback chain (``@previous``, the
baseline), then deliver each source (``delivery.score_source``: every row's prediction
to the output table once per input version, the rows it cannot deliver to the dead-letter
queue). A scheduled run over files it scored before lands nothing. Without a champion,
or a landing zone, yet the run completes with a warning: there is nothing to score
(``selfheal score`` says so as an error).

A score task that fails (the lake did not answer) is retried by Prefect: every chunk is
keyed, so a retry delivers only what the failed attempt had not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from checkpoints import Lake
from flows.batch import delivery, inputs
from flows.batch.chain import ScoringChain
from flows.batch.champion import NoChampion, load_chain
from flows.batch.scoring import PREDICTIONS
from flows.config import SelfhealConfig, load_config

logger = logging.getLogger(__name__)


@dataclass
class BatchRun:
    """What one batch inference run did.

    Attributes:
        model_version: the champion that scored (None: none did).
        deliveries: one per source, in order.
        skipped: why nothing was scored, when nothing was.
    """

    model_version: str | None = None
    deliveries: list[delivery.Delivery] = field(default_factory=list)
    skipped: str | None = None


def _lake(cfg: SelfhealConfig) -> Lake:
    return Lake(cfg.lake.root, cfg.lake.storage_options or None)


@task(name="resolve-batch-input", cache_policy=NO_CACHE)
def resolve_task(cfg: SelfhealConfig, spec: str, output: str) -> list[inputs.Source]:
    sources = inputs.resolve(_lake(cfg), spec)
    delivery.check_output(output, sources)
    return sources


@task(name="load-champion", cache_policy=NO_CACHE)
def load_champion_task(cfg: SelfhealConfig) -> ScoringChain:
    # No Prefect retries: the registry client retries transient errors itself (tenacity).
    return load_chain(cfg)


@task(
    name="score-source",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=1.0),
    retry_jitter_factor=0.5,
)
def score_source_task(
    cfg: SelfhealConfig, model: ScoringChain, source: inputs.Source, output: str
) -> delivery.Delivery:
    return delivery.score_source(
        _lake(cfg),
        model,
        source,
        output,
        id_columns=cfg.data.id_columns,
        settle_seconds=cfg.landing.settle_seconds,
    )


@flow(name="selfheal-batch-inference")
def batch_inference_flow(
    input: str | None = None, output: str = PREDICTIONS, config_path: str | None = None
) -> BatchRun:
    """Score ``input`` (a lake table, ``NAME@VERSION``, a file or a folder; default: the landing zone) into ``output``.

    Args:
        input: what to score; None: ``landing.path``.
        output: the predictions table (created on the first write).
        config_path: the selfheal.yaml to use (default: $SELFHEAL_CONFIG or ./selfheal.yaml).
    """
    log = get_run_logger()
    cfg = load_config(config_path, check_estimator=False)
    spec = input or cfg.landing.path
    try:
        sources = resolve_task(cfg, spec, output)
    except inputs.InputNotFound as exc:
        if input is not None:
            raise
        log.info("nothing to score: the landing zone %s does not exist yet", spec)
        return BatchRun(skipped=str(exc))
    if not sources:
        log.info("nothing to score: %s holds no batch file", spec)
        return BatchRun(skipped=f"{spec} holds no batch file")
    try:
        model = load_champion_task(cfg)
    except NoChampion as exc:
        log.warning("nothing scored: %s", exc)
        return BatchRun(skipped=str(exc))
    run = BatchRun(model.version)
    try:
        for source in sources:
            done = score_source_task(cfg, model, source, output)
            run.deliveries.append(done)
            log.info("%s", done.line())
    finally:
        model.close()
    return run
