"""One worker's serving state: models, breaker, batcher, inference log, shadow mirror, metrics.

Built in the app's lifespan, so each worker process (forked by gunicorn after
the app was imported) builds its own threads, thread pools and registry client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from itertools import chain
from typing import Any

import pyarrow as pa

from serving.batching import BatchPolicy, MicroBatcher, PendingRequest
from serving.breaker import STATE_CODES
from serving.inference_log import (
    FEEDBACK_SCHEMA,
    FEEDBACK_TABLE,
    INFERENCE_TABLE,
    InferenceLog,
    LogBatch,
    LogTarget,
    inference_schema,
)
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelThreads
from serving.model_cache import ModelCache
from serving.predictor import Outcome, Predictor
from serving.registry import ModelRegistry
from serving.release import (
    SHADOW_TABLE,
    MirroredBatch,
    ShadowMirror,
    gathered,
    routes_to_challenger,
    shadow_log_columns,
)
from serving.reload import ControlFile, ModelSet, ModelWatcher, WatchPolicy
from serving.schema import FeatureSchema
from serving.settings import ServerSettings
from serving.shadow import ShadowAnswer, ShadowProcess

logger = logging.getLogger(__name__)

#: Above this many classes the per-class counter is skipped (label cardinality).
_MAX_CLASS_LABELS = 50


class ServingState:
    """Everything a request handler needs, for one worker process."""

    def __init__(self, settings: ServerSettings, *, metrics: ServingMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServingMetrics()
        self.pid = os.getpid()
        self.started_at = time.time()
        m = self.metrics
        self.predictor = Predictor(
            settings.breaker_policy,
            on_breaker_change=self._breaker_changed,
            on_model_error=lambda role, reason: m.prediction_errors.labels(role, reason).inc(),
        )
        m.breaker_state.set(0)
        self.registry = ModelRegistry(
            settings.model_name,
            tracking_uri=settings.tracking_uri,
            registry_uri=settings.registry_uri,
            artifact_root=settings.resolved_artifact_root,
            read_seconds=settings.registry_read_seconds,
        )
        self.watcher = ModelWatcher(
            self.registry,
            ControlFile(settings.runtime_dir),
            WatchPolicy(
                champion_alias=settings.champion_alias,
                fallback_alias=settings.fallback_alias,
                poll_seconds=settings.poll_seconds,
                control_check_seconds=settings.control_check_seconds,
                threads=ModelThreads(per_call=settings.model_threads, pool=settings.max_inflight_batches),
                trusted_types=tuple(settings.trusted_types),
            ),
            on_swap=self._swapped,
            on_reload=lambda outcome: m.model_reloads.labels(outcome).inc(),
            cache=ModelCache(settings.model_cache_dir, settings.model_name) if settings.model_cache_dir else None,
        )
        target = LogTarget.of(settings)
        self.log: InferenceLog | None = target.build(m) if target is not None else None
        self.batcher: MicroBatcher | None = None
        self.shadow = ShadowMirror(
            self._shadow_answered,
            process=ShadowProcess(settings.trusted_types, log=target),
            cpu_share=settings.shadow_cpu_share,
        )
        self._log_schemas: dict[tuple[tuple[str, str], ...], pa.Schema] = {}
        self._ready = False  # see load_models_in_background

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Load the models and start the background threads (blocking: run it in a thread)."""
        report = self.watcher.refresh()
        if not self.watcher.models.ready:
            logger.warning(
                "worker %d started without a model (%s); /ready answers 503 until @%s of %r loads",
                self.pid,
                "; ".join(report.errors) or "no such alias yet",
                self.settings.champion_alias,
                self.settings.model_name,
            )
        self.watcher.start()
        self.shadow.start()
        if self.log is not None:
            self.log.start()

    def start_batcher(self) -> None:
        policy = BatchPolicy(
            max_batch_rows=self.settings.max_batch_rows,
            max_inflight=self.settings.max_inflight_batches,
            stall_seconds=self.settings.batch_stall_seconds,
        )
        self.batcher = MicroBatcher(self.predictor, policy, on_answered=self._answered)
        self.batcher.start()

    async def stop(self) -> None:
        """Answer what is queued, stop polling, and write every queued log row."""
        if self.batcher is not None:
            await self.batcher.close()
        self.watcher.stop()
        self.shadow.stop()
        models = self.watcher.models
        for model in (models.primary, models.fallback, models.challenger):
            if model is not None:
                model.close()
        if self.log is not None:
            await asyncio.to_thread(self.log.close)
        logger.info("worker %d stopped; inference log flushed", self.pid)

    # -- hooks -------------------------------------------------------------------------
    def _breaker_changed(self, state: str) -> None:
        self.metrics.breaker_state.set(STATE_CODES.get(state, -1))
        self.metrics.breaker_transitions.labels(state).inc()

    def load_models_in_background(self) -> None:
        """From now on, load the scikit-learn model of each version started from its compiled form, in a thread.

        Called once the worker is ready (before, that import would compete with its start).
        """
        self._ready = True
        _load_in_background(self.watcher.models)

    def _swapped(self, old: ModelSet, new: ModelSet) -> None:
        if self._ready:
            _load_in_background(new)
        primary, fallback = new.versions()
        if primary != old.versions()[0]:
            self.predictor.breaker.reset()  # a new primary starts with a clean record
        self.metrics.model_version.labels("primary").set(_version_number(primary))
        self.metrics.model_version.labels("fallback").set(_version_number(fallback))
        release = new.routing
        if new.challenger is not old.challenger:
            self.predictor.challenger_breaker.reset()
        for mode in ("shadow", "canary"):
            share = release.share if release is not None and release.mode == mode else 0.0
            self.metrics.release_share.labels(mode).set(share)

    def _answered(self, batch: list[PendingRequest], columns: dict[str, list[Any]], outcome: Outcome) -> None:
        rows = sum(p.rows for p in batch)
        prediction = outcome.prediction
        m = self.metrics
        m.predictions.labels(outcome.served_by).inc(rows)
        m.batch_rows.observe(rows)
        if prediction.scores is not None:
            observe = m.prediction_score.observe
            for score in prediction.scores.tolist():
                observe(score)
            labels = prediction.labels.tolist()
            counts = Counter(labels)
            if len(counts) <= _MAX_CLASS_LABELS:
                for label, count in counts.items():
                    m.predicted_class.labels(str(label)).inc(count)
        else:
            observe = m.prediction_value.observe
            for value in prediction.values.tolist():
                observe(value)
        release = batch[0].models.routing
        if release is not None:
            m.release_rows.labels(outcome.variant).inc(rows)
            if release.mode == "shadow":
                self._mirror(batch, release.share)
        if self.log is None:
            return
        schema = batch[0].models.schema
        assert schema is not None
        now = time.perf_counter()
        version = outcome.model_version
        data: dict[str, Any] = dict(columns)
        data["_request_id"] = list(chain.from_iterable(p.row_ids for p in batch))
        data["_ts"] = list(chain.from_iterable([p.received_us] * p.rows for p in batch))
        data["_model_version"] = [version] * rows
        data["_served_by"] = [outcome.served_by] * rows
        data["_prediction"] = prediction.values
        data["_score"] = prediction.scores
        data["_latency_ms"] = list(chain.from_iterable([(now - p.started) * 1000.0] * p.rows for p in batch))
        data["_variant"] = [outcome.variant] * rows
        self.log.submit(LogBatch(INFERENCE_TABLE, self._log_schema(schema), data, rows))

    def _mirror(self, batch: list[PendingRequest], share: float) -> None:
        """Copy the sampled requests of a champion batch to the shadow challenger (never waits)."""
        challenger = batch[0].models.challenger
        if challenger is None:
            return
        dropped = 0
        for p in batch:
            if routes_to_challenger(p.request_id, share) and not self.shadow.offer(
                challenger, p.columns, p.row_ids, p.received_us
            ):
                dropped += p.rows
        if dropped:  # one count a batch: under load most copies are dropped
            self.metrics.shadow_rows.labels("dropped").inc(dropped)

    def _shadow_answered(
        self, model: LoadedModel, batch: MirroredBatch, answer: ShadowAnswer | None, elapsed_ms: float
    ) -> None:
        """The shadow thread's answer: counted; rows its process did not take are logged here, as errors.

        The shadow process logs the rows it took (``serving.shadow``).
        """
        rows = batch.rows
        predicted = answer is not None and answer.error is None
        self.metrics.shadow_rows.labels("predicted" if predicted else "failed").inc(rows)
        if answer is not None or self.log is None:
            return
        items = batch.items()
        data = shadow_log_columns(items, gathered(items), model.schema.names, model.version, None, elapsed_ms)
        self.log.submit(LogBatch(SHADOW_TABLE, self._log_schema(model.schema), data, rows))

    def _log_schema(self, schema: FeatureSchema) -> pa.Schema:
        cached = self._log_schemas.get(schema.key)
        if cached is None:
            cached = self._log_schemas[schema.key] = inference_schema(schema.arrow_fields)
        return cached

    def record_feedback(self, request_ids: list[str], labels: list[float]) -> bool:
        """Queue ground-truth labels for the feedback table; False when the log queue is full."""
        assert self.log is not None
        now_us = time.time_ns() // 1000
        data = {"request_id": request_ids, "label": labels, "ts": [now_us] * len(labels)}
        return self.log.submit(LogBatch(FEEDBACK_TABLE, FEEDBACK_SCHEMA, data, len(labels)))


def _load_in_background(models: ModelSet) -> None:
    for model in (models.primary, models.fallback, models.challenger):
        if model is not None:
            model.load_in_background()


def _version_number(version: str | None) -> float:
    if version is None:
        return 0.0
    try:
        return float(version)
    except ValueError:
        return -1.0
