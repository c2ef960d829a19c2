"""``selfheal.yaml``: the one configuration file, validated, with ``SELFHEAL_*`` overrides.

Precedence, highest first: environment (``SELFHEAL_LAKE__ROOT=/data/lake``; nested
keys joined by ``__``), the YAML file, the defaults below. Relative paths are
resolved against the folder holding the YAML file.

Example:
    >>> cfg = load_config("selfheal.yaml")
    >>> cfg.lake.root, cfg.data.target
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import math
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chaos.sla import DEFAULT_HEALING_OFF_MTTR_SECONDS, DEFAULT_MTTR_SECONDS
from checkpoints.exceptions import SelfhealError
from flows.conditions import parse
from flows.metrics import COMPUTED, DEFAULT_GATE_METRIC

DEFAULT_CONFIG_FILE = "selfheal.yaml"
Task = Literal["binary", "multiclass", "regression"]


class ConfigError(SelfhealError):
    """The configuration is invalid; the message names the key path (the CLI exits with 2)."""

    exit_code = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LakeConfig(_Section):
    """Where the Delta tables live: a local folder or an object-store URI."""

    root: str = ".selfheal/lake"
    storage_options: dict[str, str] = Field(default_factory=dict)


class LandingConfig(_Section):
    """Where new batches arrive (one batch per file)."""

    path: str = ".selfheal/landing"
    format: Literal["parquet", "csv"] = "parquet"
    fallback: str | None = None
    """A second source read when the primary stays unreachable after retries."""
    settle_seconds: float = Field(default=10.0, ge=0.0)
    """A file is taken once it is complete: parquet when its footer is valid, any file
    once its size and modification time stayed unchanged this long (a CSV, or a parquet
    file cut short, which is then quarantined). Writers that pause longer between
    flushes should write under a hidden name (``.name`` or ``_name``) and rename."""
    monitor: bool = True
    """Score every landed batch with the champion before training on it and log the rows
    (``batch_log``) for the monitor: batch data is watched for drift and, when it carries
    labels, for performance and concept drift, like live traffic (``flows.monitor.batch``)."""


DuplicateHandling = Literal["keep", "drop", "quarantine"]


class Expectations(_Section):
    """Data expectations every batch must meet (checked by the validate stage)."""

    min_rows: int = Field(default=50, ge=0)
    max_null_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    max_duplicate_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    duplicates: DuplicateHandling | None = None
    """What a batch's identical rows (equal in every column) do: ``keep`` lands them (real
    data can hold legitimately identical records); ``drop`` lands the first copy only and
    counts the rest; ``quarantine`` refuses a batch with more than ``max_duplicate_fraction``
    of them and drops those it tolerates. None: ``keep`` without ``data.id_columns``,
    ``quarantine`` with them (a repeated id is a repeated record)."""
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    value_sets: dict[str, list[str]] = Field(default_factory=dict)
    label_values: list[Any] | None = None
    """Allowed target values; None: any value, and for classification the classes seen first."""

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for column, (low, high) in value.items():
            if math.isnan(low) or math.isnan(high):
                raise ValueError(f"{column}: [{low}, {high}] is not a range (nan)")
            if low > high:
                raise ValueError(f"{column}: [{low}, {high}] is reversed (low > high); write [{high}, {low}]")
        return value


class DataConfig(_Section):
    """What the data looks like."""

    target: str = "is_fraud"
    task: Task = "binary"
    time_column: str | None = None
    id_columns: list[str] = Field(default_factory=list)
    schema_: dict[str, str] | None = Field(default=None, alias="schema")
    """Feature column -> dtype ("float64", "int64", "string", "bool"). None: inferred
    from the first accepted batch and then locked."""
    expectations: Expectations = Field(default_factory=Expectations)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def duplicate_handling(self) -> DuplicateHandling:
        """``expectations.duplicates``, or its default for these id columns."""
        if self.expectations.duplicates is not None:
            return self.expectations.duplicates
        return "quarantine" if self.id_columns else "keep"

    @field_validator("schema_")
    @classmethod
    def _known_dtypes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        allowed = {"float64", "int64", "string", "bool"}
        for column, dtype in (value or {}).items():
            if dtype not in allowed:
                raise ValueError(f"column {column!r}: dtype {dtype!r} is not one of {sorted(allowed)}")
        return value


class HoldoutConfig(_Section):
    strategy: Literal["random", "time"] = "random"
    fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class TrainerConfig(_Section):
    """The estimator to train: an import path and its parameters."""

    estimator: str | None = None
    """Import path, e.g. ``sklearn.ensemble.HistGradientBoostingClassifier``; None picks
    histogram gradient boosting for the task."""
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 42
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)
    trusted_types: list[str] = Field(default_factory=list)
    """Extra types skops may load for this estimator (see ``serving.modelio``)."""
    window_batches: int | None = None
    """Train on the newest N batches of silver only (None: all)."""

    @field_validator("estimator")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and (value.count(".") < 1 or " " in value):
            raise ValueError(f"expected an import path like 'package.module.Class', got {value!r}")
        return value


class GateConfig(_Section):
    """The evaluation gate a challenger must pass to be promoted."""

    metric: str | None = None
    """roc_auc (binary), f1_macro (multiclass), r2 (regression) when None."""
    minimum: float = 0.0
    tolerance: float = Field(default=0.01, ge=0.0)
    """How much worse than the champion (same holdout) a challenger may be."""


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    replicas: int = Field(default=2, ge=1)
    """Servers on the port, each with ``workers`` workers, under a supervisor that starts a dead one again
    (1: one gunicorn master, whose death closes the port until the healer restarts it)."""
    front: Literal["none", "haproxy"] = "none"
    """A proxy on the port (under the supervisor) that sends a request again when its worker dies before
    answering: ``haproxy`` (the Debian package) loses no request to a killed worker."""
    url: str | None = None
    """A running server to tell about new champions (``POST /admin/reload``)."""
    poll_seconds: float = Field(default=10.0, gt=0)
    predict_timeout_seconds: float = Field(default=1.0, gt=0)
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=10.0, gt=0)


class GoldenConfig(_Section):
    """The golden-dataset probe: a frozen sample of each promoted version's holdout, replayed against the server.

    At each promotion the pipeline freezes ``rows`` holdout records (stratified by label for
    classification) with the outputs the registered artifact gives on them; the healer replays
    the champion's set against ``/predict`` every ``interval_seconds`` and raises
    ``model_mismatch`` when a label differs or a score is off by more than ``tolerance``.

    Example:
        >>> GoldenConfig(rows=100, interval_seconds=60, tolerance=1e-6)
    """

    enabled: bool = True
    """Freezing at promotion and the healer's replay, together (the chaos sandbox forces it on, every 10 s)."""
    rows: int = Field(default=100, ge=1, le=1000)
    """Records per golden set (at most the server's ``max_request_rows``: the set is one request)."""
    interval_seconds: float = Field(default=60.0, gt=0)
    """Seconds between two replays by the healer (a repair's replay waits at most this long to match)."""
    tolerance: float = Field(default=1e-6, ge=0.0)
    """Largest absolute difference between a served score (or regression value) and the frozen one."""


class PromoteConfig(_Section):
    """What the pipeline's promote step does with a model that passed the gate."""

    target: Literal["direct", "shadow", "canary"] = "direct"
    """direct: it becomes champion at once; shadow/canary: it starts a release as challenger."""


class AnalysisMetric(_Section):
    """One metric of the release analysis, judged like an Argo Rollouts AnalysisRun metric.

    A measurement is *successful* when ``success_condition`` holds, *failed* when
    ``failure_condition`` holds, *inconclusive* when neither does (or an arm has fewer
    than ``min_samples`` rows). Conditions are expressions over ``challenger``,
    ``champion`` and ``result`` (see ``flows.release.controller``), e.g. ``result <= 0.01``.

    Example:
        >>> AnalysisMetric(success_condition="result <= 0.01", failure_condition="result > 0.05", failure_limit=1)
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    success_condition: str | None = Field(
        default=None, validation_alias=AliasChoices("success_condition", "successCondition")
    )
    failure_condition: str | None = Field(
        default=None, validation_alias=AliasChoices("failure_condition", "failureCondition")
    )
    failure_limit: int = Field(default=0, ge=0, validation_alias=AliasChoices("failure_limit", "failureLimit"))
    """Failed measurements tolerated; one more fails the release."""
    inconclusive_limit: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("inconclusive_limit", "inconclusiveLimit")
    )
    """Inconclusive measurements tolerated; one more makes the release inconclusive."""
    min_samples: int = Field(default=30, ge=1)
    enabled: bool = True

    @field_validator("success_condition", "failure_condition")
    @classmethod
    def _expression(cls, value: str | None) -> str | None:
        if value is not None:
            parse(value)
        return value


def _default_metrics() -> dict[str, AnalysisMetric]:
    def fails_at_once(success: str, failure: str, **limits: int) -> AnalysisMetric:
        """A default metric: one failed measurement fails the release, a fourth inconclusive one holds it."""
        conditions = {"success_condition": success, "failure_condition": failure}
        return AnalysisMetric.model_validate({**conditions, "failure_limit": 1, "inconclusive_limit": 3, **limits})

    return {
        "error_rate": fails_at_once("result <= 0.01", "result > 0.05"),
        "latency_p99_ms": fails_at_once("challenger <= champion * 1.25 + 5", "challenger > champion * 2 + 50"),
        "prediction_distance": fails_at_once("result <= 0.2", "result > 0.5"),
        "quality": fails_at_once("result >= -0.01", "result < -0.05", inconclusive_limit=6, min_samples=50),
    }


METRIC_NAMES = ("error_rate", "latency_p99_ms", "prediction_distance", "quality")


class ReleaseConfig(_Section):
    """Shadow and canary releases and the analysis that promotes or rolls them back (``flows.release.controller``)."""

    shadow_share: float = Field(default=1.0, gt=0.0, le=1.0)
    """Share of requests mirrored to a shadow challenger."""
    steps: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5])
    """Canary shares, in order; the share moves one step every ``step_seconds``."""
    step_seconds: float = Field(default=60.0, gt=0)
    interval_seconds: float = Field(default=10.0, gt=0)
    """Seconds between analysis measurements."""
    count: int = Field(default=12, ge=1)
    """Measurements after which a release that has not failed is promoted (or held when inconclusive)."""
    on_inconclusive: Literal["hold", "promote", "abort"] = "hold"
    """hold: keep the split and wait for `selfheal release promote|abort` (Argo pauses too)."""
    quality_metric: str | None = None
    """The metric on labels; None: the gate metric. ``brier`` suits a rare positive class."""
    metrics: dict[str, AnalysisMetric] = Field(default_factory=_default_metrics)
    """Metric name -> conditions; names left out keep their defaults."""

    @field_validator("steps")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 < v <= 1.0 for v in value):
            raise ValueError(f"expected a non-empty list of shares in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ReleaseConfig:
        unknown = sorted(set(self.metrics) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(f"unknown analysis metric(s) {unknown}; have {list(METRIC_NAMES)}")
        self.metrics = {**_default_metrics(), **self.metrics}
        return self


class SLAConfig(_Section):
    """Service levels the chaos suite holds recovery to.

    ``mttr_seconds`` is looked up by experiment name, then cause, then ``default``; the
    config's entries go over ``DEFAULT_MTTR_SECONDS``. ``healing_off_mttr_seconds`` caps
    the healing-off pass of ``selfheal chaos run --matrix`` for ``healed`` experiments (they
    must miss: waiting the whole SLA for it proves nothing more); within it the pass waits
    3x the experiment's healing-on MTTR, 10 s at least (``flows.chaos_suite.flow.healing_off_bounds``).
    """

    mttr_seconds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MTTR_SECONDS))
    availability: float = Field(default=0.99, ge=0.0, le=1.0)
    rows_lost: int = Field(default=0, ge=0)
    healing_off_mttr_seconds: float = Field(default=DEFAULT_HEALING_OFF_MTTR_SECONDS, gt=0.0)

    @field_validator("mttr_seconds")
    @classmethod
    def _over_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_MTTR_SECONDS, **value}


DEFAULT_POLICY: dict[str, list[str]] = {
    "serving_down": ["restart_serving", "hold_fallback"],
    "upstream_outage": ["hold_fallback"],
    "bad_deploy": ["rollback", "retrain"],
    "data_quality": ["schema_evolution", "quarantine_backfill", "impute"],
    "concept_drift": ["retrain", "rollback"],
    "data_drift": ["retrain", "hold_fallback"],
    "latency": ["light_model", "restart_serving"],
    "stale_data": ["quarantine_backfill", "hold_fallback"],
    "lake_corrupted": ["recover_tables"],
    "model_mismatch": ["restart_serving", "rollback"],
    "output_delivery": ["replay_dlq"],
}
DEFAULT_COSTS: dict[str, float] = {
    "retrain": 10.0,
    "quarantine_backfill": 3.0,
    "impute": 2.0,
    "schema_evolution": 1.0,
    "recover_tables": 1.0,
    "rollback": 1.0,
    "light_model": 1.0,
    "restart_serving": 1.0,
    "hold_fallback": 0.0,
    "replay_dlq": 1.0,
}


class LearningConfig(_Section):
    """The learned remedy policy (``healing.policy_mode: learned``; see ``flows.healer.policy``)."""

    min_observations: int = Field(default=3, ge=1)
    """Outcomes a remedy needs in a context before the learned policy trusts its estimate there."""
    confidence_z: float = Field(default=1.0, ge=0.0)
    """The learned remedy replaces the rules' one only when its mean reward is better by this many standard errors."""
    explore_epsilon: float = Field(default=0.0, ge=0.0, le=1.0)
    """Chance of a random remedy among the allowed ones: honoured only inside the chaos sandbox."""
    escalation_penalty_seconds: float = Field(default=3600.0, ge=0.0)
    """An escalated incident counts as a recovery this slow."""
    cost_seconds: float = Field(default=1.0, ge=0.0)
    """Seconds of recovery one unit of ``healing.costs`` is worth in the reward."""


class SchemaMatchThresholds(_Section):
    """When the ``schema_evolution`` remedy takes a batch's unknown column for a known one renamed.

    The values decide whether the columns are the same at all (both must hold, or the
    column is not mapped: a renamed column with other values is a different column);
    the name and the sample size decide only whether a repair may map it without a person.

    Example:
        >>> SchemaMatchThresholds(max_ks_distance=0.1)   # stricter than the default
    """

    max_ks_distance: float = Field(default=0.2, gt=0.0, le=1.0)
    """Largest Kolmogorov-Smirnov statistic between the column and the known column's last-good values
    (for text/bool columns, total variation of value frequencies). 0.2: a sample of 100 rows of the known
    distribution stays below it with 99.9% probability; different features are usually far above it."""
    min_value_overlap: float = Field(default=0.95, ge=0.0, le=1.0)
    """Smallest share of the column's values the known column could hold (numbers: within its last-good
    range; others: among its last-good values)."""
    min_name_similarity: float = Field(default=0.6, ge=0.0, le=1.0)
    """Auto only: smallest difflib ratio of the names (amount/amount_v2 0.80, amount/amt 0.67, amount/fare
    0.20); a pair whose values fit but whose names differ more waits for ``selfheal incidents approve``."""
    min_rows: int = Field(default=30, ge=1)
    """Auto only: fewest non-null values of the column to judge its distribution by."""


class HealingConfig(_Section):
    """Which remedies the healer tries for each cause, in order, and what it may spend."""

    enabled: bool = True
    """False: detection still runs and incidents are recorded, nothing is repaired."""
    policy: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_POLICY.items()})
    """cause -> ordered remedies; causes left out keep their default list."""
    max_attempts: int = Field(default=1, ge=1)
    """Attempts per remedy before moving to the next one."""
    cooldown_seconds: float = Field(default=0.0, ge=0.0)
    """Wait after a failed verification before the next remedy."""
    verify_timeout_seconds: float = Field(default=90.0, gt=0)
    """How long a remedy may wait for fresh evidence before it counts as failed."""
    dlq_grace_seconds: float = Field(default=15.0, ge=0.0)
    """Batch rows whose delivery failed (``dlq`` kinds ``write``, ``model``) raise ``output_delivery`` once the
    oldest has waited this long: a replay into a destination still in its outage only uses up attempts
    (``flows.healer.dlq``)."""
    costs: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_COSTS))
    budget_per_window: float = Field(default=100.0, ge=0.0)
    budget_window_seconds: float = Field(default=3600.0, gt=0)
    retrain_window: int | None = Field(default=None, ge=1)
    """Retrain remedy when the incident knows no change point: train on the newest N batches only (None: all)."""
    retrain_min_rows: int = Field(default=200, ge=1)
    """Retrain remedy with a known change point: labeled rows after the change it waits for before training
    (the incident stays HEALING and says how many it has), instead of training on too few or escalating."""
    recovery_tolerance: float = Field(default=0.05, ge=0.0)
    """A drift incident resolves only when the champion's gate metric on labels after the repair is within
    this much of its pre-drift level (absolute; e.g. roc_auc 0.93 against 0.96 before the drift is within 0.05)."""
    unfelt_drift: Literal["observe", "repair"] = "observe"
    """Data drift that does not reach the model (its outputs did not drift and its estimated
    quality did not fall: the signal's ``impact`` evidence) is recorded and reported, not
    repaired; ``repair`` retrains on it like any drift."""
    bad_deploy_window_seconds: float = Field(default=1800.0, gt=0)
    """A quality drop this soon after a promotion is blamed on the deploy."""
    interval_seconds: float = Field(default=5.0, gt=0)
    escalation_hold_seconds: float = Field(default=900.0, ge=0)
    """After an escalation, the same cause opens no new incident for this long (no loops)."""
    webhook_url: str | None = None
    policy_mode: Literal["rules", "learned"] = "rules"
    """``learned``: choose among ``policy``'s remedies for the cause with the policy ``selfheal policy train``
    learned from the decisions log; the rules' order where it has too little data or is not better."""
    approval: dict[str, Literal["auto", "approve"]] = Field(default_factory=dict)
    """remedy -> ``approve``: the incident waits (AWAITING_APPROVAL) for ``selfheal incidents approve``."""
    learning: LearningConfig = Field(default_factory=LearningConfig)
    schema_evolution: Literal["auto", "approve"] = "auto"
    """The ``schema_evolution`` remedy (a quarantined batch's renamed column mapped back to the known one):
    ``auto`` applies a mapping whose evidence is above ``schema_match``'s auto thresholds; ``approve`` (and
    any mapping below them) waits for ``selfheal incidents approve``. A mapping is recorded and reused."""
    schema_match: SchemaMatchThresholds = Field(default_factory=SchemaMatchThresholds)

    @model_validator(mode="after")
    def _complete(self) -> HealingConfig:
        self.policy = {**DEFAULT_POLICY, **self.policy}
        self.costs = {**DEFAULT_COSTS, **self.costs}
        return self


class GitOpsConfig(_Section):
    """The definitions git holds, kept live (``flows.gitops``; ``selfheal gitops diff|sync|watch``)."""

    repo: str = "."
    """A git checkout (relative paths: to the config file's folder)."""
    revision: str = "HEAD"
    """The commit, branch or tag whose files are the desired state, resolved at every pass."""
    prefect_file: str = "deployments/prefect.yaml"
    """The deployments file, inside ``repo``."""
    pool: str = "local"
    """The work pool whose deployments are reconciled."""
    self_heal: bool = Field(default=False, validation_alias=AliasChoices("self_heal", "selfHeal"))
    """Revert drift (Argo CD's ``selfHeal``, off by default there too); false: only report it (the
    incident stays DIAGNOSED). Changes committed to git are applied either way."""
    prune: bool = False
    """Delete deployments of the pool that git no longer has."""
    interval_seconds: float = Field(default=180.0, gt=0)
    """How often ``selfheal gitops watch`` compares (Argo CD's default sync interval is 3 minutes)."""


class SelfhealConfig(BaseSettings):
    """The whole of ``selfheal.yaml``."""

    model_config = SettingsConfigDict(
        env_prefix="SELFHEAL_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    project: str = "selfheal"
    model_name: str = "fraud-detector"
    home: str = ".selfheal"
    """Local state: the Prefect and MLflow databases, pid files, reports."""
    tracking_uri: str = ""
    """MLflow tracking URI; empty means ``sqlite:///<home>/mlflow.db``."""
    artifact_root: str = ""
    """Where the registry keeps model files; empty means ``<home>/artifacts``. The server and the
    pipeline refuse a version whose artifacts live anywhere else."""
    lake: LakeConfig = Field(default_factory=LakeConfig)
    """The Delta lake: a folder or an ``s3://`` root, and the store's options."""
    landing: LandingConfig = Field(default_factory=LandingConfig)
    """The landing zone the pipeline takes batch files from, and its fallback source."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The table's meaning: the label, the task, the time and id columns, its schema and expectations."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """The estimator a training run fits, its holdout, and how many of the newest batches it reads."""
    gate: GateConfig = Field(default_factory=GateConfig)
    """What a challenger must score on the holdout, against the champion, to be promoted."""
    serving: ServingConfig = Field(default_factory=ServingConfig)
    """``selfheal serve``: its address, workers and replicas, the registry poll and the breaker."""
    thresholds: dict[str, Any] = Field(default_factory=dict)
    """Monitor thresholds (see ``flows.monitor.detectors``); unset keys keep their defaults."""
    healing: HealingConfig = Field(default_factory=HealingConfig)
    """The healer: on or off, its remedies per cause, attempts and timeouts."""
    slas: SLAConfig = Field(default_factory=SLAConfig)
    """What recovery must meet: MTTR by experiment or cause, availability, rows lost."""
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    """What the promote step does with a model that passed the gate: champion at once, or a release."""
    golden: GoldenConfig = Field(default_factory=GoldenConfig)
    """The golden-set probe that checks the served model is the registered one."""
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    """Shadow and canary releases: shares, canary steps, the analysis' metrics and what ends a release."""
    gitops: GitOpsConfig = Field(default_factory=GitOpsConfig)
    """The deployments and ``@champion`` as a git repository says (``selfheal gitops watch``)."""
    source_path: str | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _resolve_paths(self) -> SelfhealConfig:
        base = Path(self.source_path).parent if self.source_path else Path.cwd()

        def resolve(value: str) -> str:
            if "://" in value:
                return value
            return str((base / value).resolve())

        self.home = resolve(self.home)
        self.lake.root = resolve(self.lake.root)
        self.landing.path = resolve(self.landing.path)
        if self.landing.fallback:
            self.landing.fallback = resolve(self.landing.fallback)
        if not self.tracking_uri:
            self.tracking_uri = f"sqlite:///{Path(self.home) / 'mlflow.db'}"
        self.artifact_root = resolve(self.artifact_root) if self.artifact_root else f"{self.home}/artifacts"
        return self

    @property
    def config_hash(self) -> str:
        """A short digest of everything that changes what the pipeline computes."""
        relevant = self.model_dump(include={"data", "trainer", "gate"}, mode="json", by_alias=True)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def gate_metric(self) -> str:
        return self.gate.metric or DEFAULT_GATE_METRIC[self.data.task]

    @model_validator(mode="after")
    def _fits_the_task(self) -> SelfhealConfig:
        """Metrics the task's stages compute (else every run is "rejected ... nan") and an estimator of its kind.

        The estimator check imports scikit-learn (~1.5 s): skipped inside
        ``load_config(check_estimator=False)`` (``selfheal serve``: the server trains nothing).
        """
        problems = [*self._unknown_metrics()]
        if self.trainer.estimator is not None and _CHECK_ESTIMATOR.get():
            try:
                _check_estimator(
                    self.trainer.estimator, self.data.task, json.dumps(self.trainer.params, sort_keys=True, default=str)
                )
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _unknown_metrics(self) -> list[str]:
        task = self.data.task
        holdout, feedback = COMPUTED["holdout"][task], COMPUTED["feedback"][task]
        problems = []
        if self.gate_metric not in holdout:
            problems.append(
                f"gate.metric: {self.gate_metric!r} is not computed on the holdout for data.task {task!r}; "
                f"use one of {list(holdout)}"
            )
        quality = self.release.quality_metric or self.gate_metric
        if quality not in feedback and (self.release.quality_metric or not problems):
            where = "" if self.release.quality_metric else f" (unset: gate.metric {quality!r})"
            problems.append(
                f"release.quality_metric: {quality!r}{where} is not computed on labeled feedback for data.task "
                f"{task!r}; use one of {list(feedback)}"
            )
        return problems


#: Whether validating a config imports ``trainer.estimator`` to check it (``load_config(check_estimator=...)``).
_CHECK_ESTIMATOR: ContextVar[bool] = ContextVar("selfheal_check_estimator", default=True)


@functools.lru_cache(maxsize=16)
def _check_estimator(path: str, task: str, params_json: str) -> None:
    """Refuse an estimator path that is not a scikit-learn estimator of the task's kind.

    Imports the module (the pipeline would anyway) but instantiates nothing that lacks an
    estimator's methods, so an arbitrary import path never runs as one. Cached: a process
    loading the config again pays the import once.
    """
    from sklearn.base import is_classifier, is_regressor  # sklearn only when an estimator is configured

    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except ImportError as exc:
        raise ValueError(f"trainer.estimator: cannot import {module_name!r}: {exc}") from exc
    if not inspect.isclass(found):
        raise ValueError(f"trainer.estimator: {path!r} is not a class (e.g. {DEFAULT_ESTIMATORS[task]!r})")
    missing = [m for m in ("fit", "predict", "get_params", "set_params") if not callable(getattr(found, m, None))]
    if missing:
        raise ValueError(f"trainer.estimator: {path!r} is not a scikit-learn estimator (no {', '.join(missing)})")
    try:
        estimator = found(**json.loads(params_json))
    except TypeError as exc:
        raise ValueError(f"trainer.params: {path} does not take them: {exc}") from exc
    wanted, kind = (is_regressor, "regressor") if task == "regression" else (is_classifier, "classifier")
    if not wanted(estimator):
        raise ValueError(
            f"trainer.estimator: {path!r} is not a {kind} and data.task is {task!r} (e.g. {DEFAULT_ESTIMATORS[task]!r})"
        )


#: The estimator trained when ``trainer.estimator`` is not set.
DEFAULT_ESTIMATORS = {
    "binary": "sklearn.ensemble.HistGradientBoostingClassifier",
    "multiclass": "sklearn.ensemble.HistGradientBoostingClassifier",
    "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
}


def _format_errors(exc: ValidationError, source: str) -> str:
    """One line naming each bad key (a check across sections names its keys in its message)."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or not path else f" (got {got!r})"
        parts.append(f"{path}: {message}{shown}" if path else message)
    return f"{source}: invalid configuration: " + "; ".join(parts)


def load_config(path: str | os.PathLike[str] | None = None, *, check_estimator: bool = True) -> SelfhealConfig:
    """Read and validate a config file; a missing default file means all defaults.

    Args:
        path: the YAML file; None reads ``$SELFHEAL_CONFIG`` or ``./selfheal.yaml`` if present.
        check_estimator: import ``trainer.estimator`` to check it (scikit-learn: 2 s of
            imports). False for commands that train nothing (``serve``, a one-shot monitor
            pass or healer tick): a pipeline run loads the config again, with the check.

    Raises:
        ConfigError: the file is unreadable or a key is invalid; the message names the key path.
    """
    explicit = path is not None or "SELFHEAL_CONFIG" in os.environ
    file = Path(path or os.environ.get("SELFHEAL_CONFIG", DEFAULT_CONFIG_FILE))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    elif explicit:
        raise ConfigError(f"{file}: no such config file")
    try:
        token = _CHECK_ESTIMATOR.set(check_estimator)
        try:
            return SelfhealConfig(**data, source_path=str(file.resolve()) if file.exists() else None)
        finally:
            _CHECK_ESTIMATOR.reset(token)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(file))) from exc
