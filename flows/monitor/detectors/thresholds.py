"""Monitor thresholds: every default here is a decision, so each one says why.

They live under ``thresholds:`` in ``selfheal.yaml``; unset keys keep the defaults::

    thresholds:
      drift:
        alpha: 0.001
        numeric_effect_floor: 0.1
      consecutive:
        latency: 3
      freshness_seconds:
        inference_log: 1800

Example:
    >>> t = MonitorThresholds.from_mapping({"drift": {"alpha": 0.05}})
    >>> t.drift.alpha, t.drift.numeric_effect_floor
    (0.05, 0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.config import ConfigError
from flows.monitor.signals import SignalKind

Correction = Literal["holm", "bonferroni", "fdr_bh", "none"]
_CONSECUTIVE = {"latency": 3, "error_rate": 2, "missing_rows": 3, "serving_down": 2}


class _Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftThresholds(_Thresholds):
    """When a feature (or the prediction) distribution counts as drifted.

    A feature drifts only when both gates agree: the test is significant after
    the multiple-testing correction **and** the effect size is above a floor.
    The test alone flags meaningless 0.02-sigma shifts once n reaches 100k; the
    floor alone alarms on noise in small windows.

    Example:
        >>> DriftThresholds(alpha=0.05, numeric_effect_floor=0.2).alpha
        0.05
    """

    alpha: float = Field(default=0.001, gt=0.0, lt=1.0)
    """Family-wise error rate across all features of one window. In 500-row windows
    the effect floor barely binds (the Wasserstein noise alone reaches 0.1 sigma), so
    alpha is what keeps quiet data quiet. Measured on 5 unchanged features, 500 vs
    5000 rows: 1.3% of windows alarm at 0.01, 0.7% at 0.005, under 0.1% at 0.001;
    at 0.001 a 0.5-sigma shift is still caught in every such window and a
    0.25-sigma shift in about 90% of them (and in the next window otherwise)."""
    correction: Correction = "holm"
    """Holm controls the family-wise error like Bonferroni and is never less powerful.
    The question a window answers is "did anything change", so FWER, not FDR."""
    numeric_effect_floor: float = Field(default=0.1, ge=0.0)
    """Wasserstein-1 distance in reference standard deviations. 0.1 sigma is the point
    below which a model's outputs barely move, and the threshold Evidently uses for
    large data, so reports read the same."""
    categorical_effect_floor: float = Field(default=0.1, ge=0.0, le=1.0)
    """Jensen-Shannon distance (base 2, in [0, 1]). 0.1 is about a 10-point move of
    share between two categories; also Evidently's large-data default."""
    psi_bins: int = Field(default=10, ge=2, le=1000)
    """Reference deciles: the classic PSI binning, so the 0.1/0.25 bands below apply."""
    psi_warning: float = Field(default=0.1, ge=0.0)
    """PSI bands from credit-risk practice: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major."""
    psi_critical: float = Field(default=0.25, ge=0.0)
    """A drifted feature with PSI at or above this, or an effect twice the floor, is critical."""
    dataset_drift_share: float = Field(default=0.0, ge=0.0, le=1.0)
    """The dataset drifts when at least one feature drifts and the drifted share is at
    least this. 0: one genuinely moved feature is enough for the healer to look, the
    correction already keeps quiet data quiet (Evidently's 0.5 misses a single-feature shift)."""
    calibration_chunks: int = Field(default=6, ge=0)
    """Calibrated alarms (as NannyML derives its thresholds): the reference is cut into
    this many consecutive chunks in landing order, each chunk's effect size against the
    whole reference is measured, and a feature's effect must also clear the mean plus
    ``calibration_sigmas`` standard deviations of those chunk effects. Variation the
    reference already shows between its own chunks (a season, a sampling cycle) then
    does not alarm; on an unchanging reference the bound sits near the floor. 0 turns
    it off; a reference with fewer than ``calibration_min_rows`` rows per chunk is not
    calibrated."""
    calibration_sigmas: float = Field(default=3.0, gt=0.0)
    """Standard deviations of the chunk effects above their mean (NannyML's default 3)."""
    calibration_min_rows: int = Field(default=100, ge=10)
    """Rows per chunk needed to calibrate: smaller chunks measure mostly sampling noise."""
    min_samples: int = Field(default=30, ge=2)
    """Non-missing values needed on each side to test a feature; below it asymptotic
    p-values are poor and one odd row moves the effect size by more than the floor."""
    max_sample_size: int = Field(default=100_000, ge=1_000)
    """Above this many rows a fixed random subsample (without replacement) is tested.
    A random subset of an iid sample is iid, so the test stays exact at its level; at
    100k the test still detects the 0.1-sigma floor with power ~1, and 1M x 20 fits in
    well under 3 s."""
    seed: int = 0
    """Seed of that subsample, so a report can be reproduced."""
    new_category_share: float = Field(default=0.01, ge=0.0, le=1.0)
    """Share of current rows whose category never appeared in the reference that counts
    as a data-quality problem: 1% unseen values is usually an upstream code change."""
    missing_share_change: float = Field(default=0.05, ge=0.0, le=1.0)
    """Rise in the missing share (null, NaN or inf) that counts as a data-quality
    problem. Five points is above sampling noise for windows of a few hundred rows
    and well under the 20% a batch may carry at validation."""

    @model_validator(mode="after")
    def _bands_ordered(self) -> DriftThresholds:
        if self.psi_critical < self.psi_warning:
            raise ValueError("psi_critical must be >= psi_warning")
        return self


class PerformanceThresholds(_Thresholds):
    """When the model's quality on labeled feedback counts as a drop."""

    min_labels: int = Field(default=200, ge=10)
    """Labeled predictions needed before judging; AUC on fewer has a standard error
    above 0.03, the size of the drops we look for."""
    max_drop: float = Field(default=0.05, ge=0.0)
    """Absolute drop of a higher-is-better metric (AUC, accuracy, F1, r2) below the
    champion's validation value: five times the promotion gate's 0.01 tolerance."""
    max_error_increase: float = Field(default=0.2, ge=0.0)
    """Relative rise of an error metric (RMSE, MAE) above the champion's validation value."""
    z: float = Field(default=3.0, ge=0.0)
    """The drop must also exceed z standard errors of the current estimate, so a
    small labeled window cannot alarm on sampling noise alone."""


class ConceptThresholds(_Thresholds):
    """The CUSUM on the per-prediction error stream (concept drift)."""

    warmup: int = Field(default=1000, ge=20)
    """Labeled predictions used to estimate the baseline error rate after a model starts
    serving. Low error rates need many: at a 2% rate a 2.5x rise was found after a
    median ~1500 predictions with 1000 warm-up labels, and hardly at all with 500
    (the margin below then swallows the rise); at 10% it takes ~150."""
    error_ratio: float = Field(default=2.0, gt=1.0)
    """Design alternative for 0/1 errors: the error rate doubles. The CUSUM is optimal
    for this change and still positive-drifting for smaller rises; a doubling design
    keeps the baseline estimate's noise (+-10% at 500 samples) from drifting it upward."""
    shift_sd: float = Field(default=0.5, gt=0.0)
    """Design alternative for continuous errors: the mean rises by this many standard deviations."""
    threshold: float = Field(default=12.0, gt=0.0)
    """Log-likelihood-ratio threshold h. Wald's bound gives at least e^12 ~ 160k
    predictions between false alarms under an unchanged error rate."""
    baseline_margin: float = Field(default=2.0, ge=0.0)
    """The baseline is taken this many standard errors above its warm-up estimate.
    An underestimated baseline makes an unchanged error rate drift the statistic
    upward: with 500 warm-up errors at a 10% rate, an estimate two standard errors
    low alarmed every ~10k predictions in testing; the margin removes that."""


class AnomalyThresholds(_Thresholds):
    """Rolling robust z-score over operational series (one value per window)."""

    history: int = Field(default=30, ge=3)
    """Windows kept per series: half an hour at one-minute monitor runs."""
    min_history: int = Field(default=8, ge=3)
    """Below this many past windows median and MAD are too unstable to judge."""
    z: float = Field(default=4.0, gt=0.0)
    """Robust z (median/MAD). 4, not 3: operational series are heavy tailed and a
    monitor that cries wolf gets muted."""
    relative_floor: float = Field(default=0.1, ge=0.0)
    """The scale is at least this share of the median, so a flat series does not
    alarm on a 1% wiggle."""
    absolute_floor: dict[str, float] = Field(
        default_factory=lambda: {
            "latency_p99_ms": 5.0,
            "error_rate": 0.01,
            "fallback_share": 0.01,
            "rows_per_second": 0.5,
            "null_rate": 0.01,
        }
    )
    """Smallest scale per series, in the series' unit: below these a change is noise.
    Keys given in the config are merged over these defaults."""

    @field_validator("absolute_floor", mode="before")
    @classmethod
    def _merge_floors(cls, value: Any) -> Any:
        defaults = cls.model_fields["absolute_floor"].get_default(call_default_factory=True)
        return {**defaults, **value} if isinstance(value, Mapping) else value


class MonitorThresholds(_Thresholds):
    """Everything the monitor flow decides with; built from ``cfg.thresholds``.

    Example:
        >>> t = MonitorThresholds.from_mapping(cfg.thresholds)
        >>> t.consecutive_for("latency")
        3
    """

    drift: DriftThresholds = Field(default_factory=DriftThresholds)
    prediction_drift: DriftThresholds = Field(default_factory=DriftThresholds)
    """The same gates applied to ``_prediction`` and ``_score``."""
    performance: PerformanceThresholds = Field(default_factory=PerformanceThresholds)
    concept: ConceptThresholds = Field(default_factory=ConceptThresholds)
    anomaly: AnomalyThresholds = Field(default_factory=AnomalyThresholds)
    min_window_rows: int = Field(default=500, ge=1)
    """Drift is tested once this many new predictions arrived (rows accumulate across
    runs until then): at 500 a 0.25-sigma shift is found with power ~1."""
    prediction_reference_rows: int = Field(default=2000, ge=100)
    """The first predictions a model version makes form its prediction reference."""
    ingest_lag_seconds: float = Field(default=10.0, ge=0.0)
    """Rows stamped (``_ts``: when their request arrived) later than now minus this are
    left for the next run. Why a lag at all: each server worker keeps its predictions in
    memory and appends them to the inference log every ``log_flush_seconds`` (5 s by
    default, ``SELFHEAL_LOG_FLUSH_SECONDS``), so a row reaches the lake up to one flush
    interval, plus its request's time and the Delta write, after its stamp; a window
    reaching closer to now would move the watermark past rows still in a worker's
    buffer, and those would never be judged. 10 s is the default flush plus 5 s for a
    large request and a slow write. A pass run right after a batch was scored sees
    every row stamped more than this ago; newer rows are the next pass's (never
    skipped). With a shorter flush interval this can shrink with it (the demo and the
    chaos sandbox flush every second and use 2 s)."""
    consecutive: dict[str, int] = Field(default_factory=lambda: dict(_CONSECUTIVE))
    """Windows in a row a condition must hold before it becomes a signal (signal kind, or
    ``kind:qualifier``, -> windows). Latency spikes and single failed scrapes are common
    and self-healing; a drift test already has its error rate controlled, so kinds not
    listed need one window. Keys given in the config are merged over these defaults."""
    freshness_seconds: dict[str, float] = Field(default_factory=lambda: {"inference_log": 3600.0})
    """Table -> maximum age of its newest commit. A live server flushes its log every
    few seconds; an hour without a commit means logging or traffic stopped. A mapping
    given in the config replaces this one (``{}`` watches no table)."""
    missing_rows_tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Rows more than 5% below the expected count (and beyond 3 sigma of counting noise)."""
    expected_rows_per_second: dict[str, float] = Field(default_factory=dict)
    """Known steady feeds (table -> rows/s); tables not listed use their rolling median rate."""
    error_rate_max: float = Field(default=0.05, ge=0.0, le=1.0)
    """Server error share that is always a signal, whatever the history says."""
    fallback_share_max: float = Field(default=0.10, ge=0.0, le=1.0)
    """Share of predictions answered by a fallback that is always a signal."""
    latency_p99_ms_max: float | None = Field(default=None, gt=0.0)
    """Optional latency SLO; None leaves latency to the anomaly detector."""
    scrape_timeout_seconds: float = Field(default=2.0, gt=0.0)

    @field_validator("consecutive", mode="before")
    @classmethod
    def _merge_consecutive(cls, value: Any) -> Any:
        return {**_CONSECUTIVE, **value} if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _known_kinds(self) -> MonitorThresholds:

        known = {k.value for k in SignalKind}
        for key, n in self.consecutive.items():
            if key.split(":", 1)[0] not in known:
                raise ValueError(f"consecutive.{key}: not a signal kind (one of {sorted(known)})")
            if n < 1:
                raise ValueError(f"consecutive.{key} must be >= 1, got {n}")
        return self

    def consecutive_for(self, kind: str) -> int:
        """Windows in a row that ``kind`` (or ``kind:qualifier``) must hold before it is a signal."""
        key = str(kind)
        return self.consecutive.get(key, self.consecutive.get(key.split(":", 1)[0], 1))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> MonitorThresholds:
        """Validate ``selfheal.yaml``'s ``thresholds`` mapping.

        Raises:
            ConfigError: a key is unknown or a value is invalid; the message names the key path.
        """
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            lines = ["invalid monitor thresholds"]
            for err in exc.errors():
                path = ".".join(str(p) for p in err["loc"]) or "<root>"
                lines.append(f"  thresholds.{path}: {err['msg']}")
            raise ConfigError("\n".join(lines)) from exc
