"""A seeded card-transaction fraud stream: the running example, with drift and data faults.

Every batch is a pure function of ``(seed, index, drift)``: the same arguments give
byte-identical files, so a test, a demo and a chaos experiment can all point at
"batch 3 of seed 7" and mean the same rows.

The stream:
    * ids and time: ``transaction_id`` (string, unique per seed) and ``event_time``
      (UTC, microseconds; batch ``i`` covers day ``i`` after 2024-01-01, rows in time order).
    * numeric features: ``amount``, ``hour``, ``merchant_risk``, ``distance_from_home_km``,
      ``card_age_days``, ``txn_count_24h``, ``customer_age`` (pure noise: a feature a
      model should learn to ignore).
    * categorical features: ``channel``, ``merchant_category``, ``payment_gateway``, ``country``.
    * target ``is_fraud`` (int 0/1): drawn from a logistic model of the features, its
      intercept calibrated so about 2% of clean rows are fraud. Gradient boosting
      reaches a ROC AUC around 0.9 on a few thousand rows.

Drift (``DriftSpec``, from ``--drift covariate:1.5`` or ``concept:1@4``):
    * covariate, magnitude ``m``: a new payment gateway ``gw_nova`` takes a share
      ``min(0.9, 0.3·m)`` of the rows; those rows have log-amounts shifted up by ``m``
      standard deviations and an online/electronics-heavy mix. P(fraud | features)
      is unchanged, but on the new gateway fraud is card testing (small amounts; its
      big baskets are safe), a region no clean row shows: a model trained before the
      drift ranks those rows backwards (ROC AUC about 0.9 falls to about 0.65 at
      magnitude 1.5) until it is retrained on the drifted data.
    * concept, magnitude ``m``: every feature is drawn exactly as without drift (the
      feature columns are identical), but the label follows a different logistic
      model (card testing: small amounts, high velocity, groceries and fuel), mixed
      in with weight ``min(1, m)``; the base fraud rate stays about 2%.
    * ``@N`` sets the onset: batches before index ``N`` are clean.

Label delay (``label_delay=d > 0``): fraud labels (chargebacks) arrive after the
transactions. Batch files are then written *without* ``is_fraud``; the labels of
batch ``i`` go to ``labels/labels-<i>.<fmt>`` (``transaction_id``, ``event_time``,
``is_fraud``) and are written together with batch ``i + d``. Label files due after
the last batch written appear on a later call (``--start``), exactly as they would
arrive. Validate label-less batches with ``require_label=False``.

Faults (``FAULTS``; one per call, applied to every batch file written):
    nulls            30% nulls in amount, card_age_days and channel
    missing_column   merchant_risk dropped
    extra_column     an unexpected promo_code column
    renamed_column   amount renamed to amt
    wrong_dtype      amount written as text, 1% of it "n/a"
    out_of_range     1% negative amounts and 1% merchant_risk above 1
    duplicates       3% of rows repeated (under the default 5% tolerance)
    truncated        the file cut at 60% of its bytes
    garbage          random bytes under the batch's file name
    empty            a zero-byte file
    bom_csv          a CSV (always ``.csv``) starting with a UTF-8 byte-order mark
    missing_label    the is_fraud column dropped
    unseen_label     1% of labels set to 2, a class binary fraud never has
    inf_values       1% +inf in amount and 1% -inf in distance_from_home_km
    all_null_column  merchant_risk entirely null

Example:
    >>> frame = generate_batch(0, rows=2000, seed=7)
    >>> paths = write_batches("landing", batches=3, rows=2000, seed=7, drift="concept:1@2")
"""

from __future__ import annotations

import codecs
import functools
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.config import DataConfig, Expectations

logger = logging.getLogger(__name__)

TARGET = "is_fraud"
TIME_COLUMN = "event_time"
ID_COLUMN = "transaction_id"
NUMERIC_FEATURES = (
    "amount",
    "hour",
    "merchant_risk",
    "distance_from_home_km",
    "card_age_days",
    "txn_count_24h",
    "customer_age",
)
CATEGORICAL_FEATURES = ("channel", "merchant_category", "payment_gateway", "country")
#: The feature schema of the stream (what a locked schema should be).
FEATURE_DTYPES: dict[str, str] = {
    "amount": "float64",
    "hour": "int64",
    "merchant_risk": "float64",
    "distance_from_home_km": "float64",
    "card_age_days": "int64",
    "txn_count_24h": "int64",
    "customer_age": "int64",
    "channel": "string",
    "merchant_category": "string",
    "payment_gateway": "string",
    "country": "string",
}
COLUMNS = (ID_COLUMN, TIME_COLUMN, *NUMERIC_FEATURES, *CATEGORICAL_FEATURES, TARGET)

CHANNELS = ("pos", "online", "atm", "moto")
MERCHANT_CATEGORIES = (
    "grocery",
    "restaurant",
    "fuel",
    "fashion",
    "electronics",
    "travel",
    "digital_goods",
    "gambling",
)
GATEWAYS = ("gw_alpha", "gw_beta", "gw_gamma")
NEW_GATEWAY = "gw_nova"
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "MX", "BR", "NG")
HOME_COUNTRY = "US"
#: Every value a categorical feature can take (``gw_nova`` only under covariate drift).
CATEGORICAL_VALUES: dict[str, tuple[str, ...]] = {
    "channel": CHANNELS,
    "merchant_category": MERCHANT_CATEGORIES,
    "payment_gateway": (*GATEWAYS, NEW_GATEWAY),
    "country": COUNTRIES,
}

FORMATS = ("parquet", "csv")
Fault = Literal[
    "none",
    "nulls",
    "missing_column",
    "extra_column",
    "renamed_column",
    "wrong_dtype",
    "out_of_range",
    "duplicates",
    "truncated",
    "garbage",
    "empty",
    "bom_csv",
    "missing_label",
    "unseen_label",
    "inf_values",
    "all_null_column",
]
#: Every fault the generator can inject (tests parametrize over this).
FAULTS: tuple[str, ...] = tuple(f for f in get_args(Fault) if f != "none")
#: Faults that change the label column (they cannot be combined with a label delay).
LABEL_FAULTS = frozenset({"missing_label", "unseen_label"})

NULL_FAULT_COLUMNS = ("amount", "card_age_days", "channel")
NULL_FAULT_FRACTION = 0.3
DROPPED_COLUMN = "merchant_risk"
EXTRA_COLUMN = "promo_code"
RENAMED_COLUMN = ("amount", "amt")
DUPLICATE_FRACTION = 0.03
TRUNCATE_AT = 0.6
FAULT_FRACTION = 0.01
UNSEEN_LABEL = 2

BASE_FRAUD_RATE = 0.02
EPOCH = pd.Timestamp("2024-01-01", tz="UTC")
_MICROS_PER_DAY = 86_400_000_000
_CALIBRATION_ROWS = 50_000
_CALIBRATION_SEED = 20240101
_FAULT_SALT = 7_919

_CHANNEL_P = (0.58, 0.32, 0.07, 0.03)
_CHANNEL_DRIFT_P = (0.15, 0.75, 0.02, 0.08)
_CATEGORY_P = (0.24, 0.18, 0.14, 0.12, 0.10, 0.08, 0.10, 0.04)
_CATEGORY_DRIFT_P = (0.08, 0.06, 0.04, 0.12, 0.28, 0.14, 0.24, 0.04)
_GATEWAY_P = (0.5, 0.35, 0.15)
_COUNTRY_P = (0.78, 0.05, 0.04, 0.03, 0.03, 0.03, 0.02, 0.02)
_HOUR_WEIGHTS = np.array(
    [0.6, 0.4, 0.3, 0.3, 0.3, 0.5, 1.0, 2.0, 3.5, 4.5, 5.0, 5.5]  # 00:00 to 11:59
    + [6.0, 5.5, 5.0, 5.0, 5.5, 6.0, 6.0, 5.5, 4.5, 3.5, 2.5, 1.5]  # 12:00 to 23:59
)
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
_AMOUNT_LOG_MEAN, _AMOUNT_LOG_SD, _AMOUNT_MAX = 3.5, 1.0, 25_000.0

# Log-odds per standardized term. Clean stream: big amounts, risky merchants, far from
# home, new cards, night, online, digital goods and gambling. Concept drift (card testing):
# small amounts, bursts of transactions, old cards, point of sale, groceries and fuel.
_BASE_WEIGHTS = {
    "amount": 1.25,
    "risk": 1.55,
    "distance": 1.0,
    "card_age": -0.85,
    "velocity": 0.7,
    "night": 1.8,
    "channel=online": 1.25,
    "channel=atm": 0.55,
    "channel=moto": 1.0,
    "category=digital_goods": 1.55,
    "category=electronics": 1.0,
    "category=gambling": 1.8,
    "category=travel": 0.7,
    "category=grocery": -0.85,
    "foreign": 1.1,
    "gateway=gw_gamma": 0.4,
    # The new gateway (covariate drift brings it in; no clean row uses it) draws card
    # testers: there fraud is small amounts, and its big baskets are safe. A model trained
    # before the drift has never seen that region, ranks it backwards and feels the drift.
    f"gateway={NEW_GATEWAY}": 5.5,
    f"amount@{NEW_GATEWAY}": -5.0,
}
_CONCEPT_WEIGHTS = {
    "amount": -1.7,
    "risk": -0.4,
    "card_age": 1.0,
    "velocity": 1.95,
    "night": -0.7,
    "channel=pos": 1.25,
    "category=grocery": 1.55,
    "category=fuel": 1.7,
    "category=digital_goods": -0.85,
    "foreign": -0.7,
    "gateway=gw_beta": 1.25,
}


@dataclass(frozen=True)
class DriftSpec:
    """What drift a batch carries, how strong, and from which batch index on.

    Attributes:
        kind: ``"none"``, ``"covariate"`` (features move, P(label | features) stays) or
            ``"concept"`` (features stay, the label's relationship to them changes).
        magnitude: covariate: shift in standard deviations; concept: mixing weight
            of the new relationship (capped at 1). Must be finite and >= 0.
        onset: the first batch index that drifts.

    Example:
        >>> DriftSpec.parse("covariate:1.5@3")
        DriftSpec(kind='covariate', magnitude=1.5, onset=3)
        >>> DriftSpec.parse("covariate:1.5@3").strength_at(2)
        0.0
    """

    kind: Literal["none", "covariate", "concept"] = "none"
    magnitude: float = 1.0
    onset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "covariate", "concept"):
            raise ValueError(f"drift kind must be none, covariate or concept, got {self.kind!r}")
        if not math.isfinite(self.magnitude) or self.magnitude < 0:
            raise ValueError(f"drift magnitude must be a finite number >= 0, got {self.magnitude!r}")
        if self.onset < 0:
            raise ValueError(f"drift onset must be a batch index >= 0, got {self.onset!r}")

    @classmethod
    def parse(cls, text: str | DriftSpec | None) -> DriftSpec:
        """Read ``none | covariate[:MAG][@ONSET] | concept[:MAG][@ONSET]``.

        Raises:
            ValueError: the text does not follow that form; the message shows it.
        """
        if isinstance(text, DriftSpec):
            return text
        raw = (text or "none").strip().lower()
        usage = "expected none | covariate[:MAG][@ONSET] | concept[:MAG][@ONSET], e.g. 'covariate:1.5@3'"
        body, _, onset_text = raw.partition("@")
        kind, has_mag, mag_text = body.partition(":")
        if kind not in ("none", "covariate", "concept"):
            raise ValueError(f"drift {text!r}: unknown kind {kind!r}; {usage}")
        if kind == "none":
            if has_mag or onset_text:
                raise ValueError(f"drift {text!r}: 'none' takes no magnitude or onset; {usage}")
            return cls()
        try:
            magnitude = float(mag_text) if has_mag else 1.0
            onset = int(onset_text) if onset_text else 0
        except ValueError:
            raise ValueError(f"drift {text!r}: magnitude must be a number and onset an integer; {usage}") from None
        return cls(kind, magnitude, onset)  # type: ignore[arg-type]

    def strength_at(self, index: int) -> float:
        """The magnitude in force for batch ``index`` (0 before the onset or without drift)."""
        if self.kind == "none" or index < self.onset:
            return 0.0
        return self.magnitude

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:{self.magnitude:g}" + (f"@{self.onset}" if self.onset else "")


# -- features and labels ------------------------------------------------------------
def _draw(rng: np.random.Generator, n: int, covariate: float) -> dict[str, np.ndarray]:
    """Raw feature arrays; categoricals as indices. Always draws the same amount of
    randomness, whatever the drift, so drift never reshuffles the other columns."""
    hour = rng.choice(24, size=n, p=_HOUR_P)
    micros_in_hour = rng.integers(0, 3_600_000_000, size=n)
    log_amount = rng.normal(_AMOUNT_LOG_MEAN, _AMOUNT_LOG_SD, size=n)
    merchant_risk = rng.beta(2.0, 5.0, size=n)
    distance = np.exp(rng.normal(1.6, 1.2, size=n))
    card_age = np.ceil(rng.gamma(1.5, 600.0, size=n))
    txn_count = rng.poisson(2.5, size=n) + 1
    customer_age = np.rint(rng.normal(44.0, 14.0, size=n))
    channel = rng.choice(len(CHANNELS), size=n, p=_CHANNEL_P)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=_CATEGORY_P)
    gateway = rng.choice(len(GATEWAYS), size=n, p=_GATEWAY_P)
    country = rng.choice(len(COUNTRIES), size=n, p=_COUNTRY_P)
    drift_u = rng.random(size=n)
    drift_channel = rng.choice(len(CHANNELS), size=n, p=_CHANNEL_DRIFT_P)
    drift_category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=_CATEGORY_DRIFT_P)
    label_u = rng.random(size=n)
    if covariate > 0:
        moved = drift_u < min(0.9, 0.3 * covariate)
        gateway = np.where(moved, len(GATEWAYS), gateway)  # index of NEW_GATEWAY
        log_amount = np.where(moved, log_amount + covariate * _AMOUNT_LOG_SD, log_amount)
        channel = np.where(moved, drift_channel, channel)
        category = np.where(moved, drift_category, category)
    return {
        "hour": hour.astype(np.int64),
        "micros_in_hour": micros_in_hour.astype(np.int64),
        "amount": np.clip(np.round(np.exp(log_amount), 2), 0.5, _AMOUNT_MAX),
        "merchant_risk": np.round(merchant_risk, 4),
        "distance_from_home_km": np.clip(np.round(distance, 1), 0.0, 20_000.0),
        "card_age_days": np.clip(card_age, 1, 7_300).astype(np.int64),
        "txn_count_24h": txn_count.astype(np.int64),
        "customer_age": np.clip(customer_age, 18, 95).astype(np.int64),
        "channel": channel,
        "merchant_category": category,
        "payment_gateway": gateway,
        "country": country,
        "label_u": label_u,
    }


def _terms(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Standardized terms of the logistic fraud model (fixed constants, not batch statistics)."""
    terms: dict[str, np.ndarray] = {
        "amount": (np.log(f["amount"]) - _AMOUNT_LOG_MEAN) / _AMOUNT_LOG_SD,
        "risk": (f["merchant_risk"] - 0.286) / 0.16,
        "distance": (np.log1p(f["distance_from_home_km"]) - 1.9) / 1.0,
        "card_age": np.log(f["card_age_days"]) - 6.4,
        "velocity": (f["txn_count_24h"] - 3.5) / 1.6,
        "night": (f["hour"] < 6).astype(np.float64),
        "foreign": (f["country"] != COUNTRIES.index(HOME_COUNTRY)).astype(np.float64),
    }
    for i, name in enumerate(CHANNELS):
        terms[f"channel={name}"] = (f["channel"] == i).astype(np.float64)
    for i, name in enumerate(MERCHANT_CATEGORIES):
        terms[f"category={name}"] = (f["merchant_category"] == i).astype(np.float64)
    for i, name in enumerate((*GATEWAYS, NEW_GATEWAY)):
        terms[f"gateway={name}"] = (f["payment_gateway"] == i).astype(np.float64)
    terms[f"amount@{NEW_GATEWAY}"] = terms[f"gateway={NEW_GATEWAY}"] * terms["amount"]
    return terms


def _weights(mix: float) -> dict[str, float]:
    names = set(_BASE_WEIGHTS) | set(_CONCEPT_WEIGHTS)
    return {k: (1 - mix) * _BASE_WEIGHTS.get(k, 0.0) + mix * _CONCEPT_WEIGHTS.get(k, 0.0) for k in sorted(names)}


def _score(terms: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = np.zeros_like(terms["amount"])
    for name, weight in weights.items():
        total += weight * terms[name]
    return total


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _intercept(mix: float) -> float:
    """The intercept giving ``BASE_FRAUD_RATE`` on clean features (fixed reference sample)."""
    reference = _draw(np.random.default_rng(_CALIBRATION_SEED), _CALIBRATION_ROWS, covariate=0.0)
    score = _score(_terms(reference), _weights(mix))
    low, high = -30.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        if float(_sigmoid(mid + score).mean()) > BASE_FRAUD_RATE:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def fraud_probability(frame: pd.DataFrame, concept: float = 0.0) -> np.ndarray:
    """P(is_fraud = 1 | features) under the clean (or concept-drifted) relationship.

    The ground truth the generator draws labels from: handy to check a model against.
    """
    arrays: dict[str, np.ndarray] = {c: frame[c].to_numpy() for c in NUMERIC_FEATURES}
    for column, categories in CATEGORICAL_VALUES.items():
        arrays[column] = _codes(frame[column], categories)
    return _probability(arrays, concept)


def _probability(arrays: dict[str, np.ndarray], concept: float) -> np.ndarray:
    mix = min(1.0, concept)
    return _sigmoid(_intercept(mix) + _score(_terms(arrays), _weights(mix)))


def _codes(values: pd.Series, categories: tuple[str, ...]) -> np.ndarray:
    return np.asarray(pd.Categorical(values, categories=list(categories)).codes, dtype=np.int64)


def generate_batch(index: int, rows: int, seed: int, drift: DriftSpec | str | None = None) -> pd.DataFrame:
    """One clean, labeled batch of the stream.

    Args:
        index: the batch's position in the stream (>= 0); sets its day and its randomness.
        rows: number of transactions (>= 0).
        seed: stream seed (>= 0); the same ``(seed, index, drift)`` gives the same rows.
        drift: a ``DriftSpec`` or its text form (``"covariate:1.5"``); None means no drift.

    Returns:
        Columns ``COLUMNS`` with dtypes: string ids and categoricals (pandas ``str``),
        ``event_time`` as ``datetime64[us, UTC]``, float64/int64 numerics, int64 target.
    """
    if index < 0 or rows < 0 or seed < 0:
        raise ValueError(f"index, rows and seed must be >= 0 (got index={index}, rows={rows}, seed={seed})")
    spec = DriftSpec.parse(drift)
    covariate = spec.strength_at(index) if spec.kind == "covariate" else 0.0
    concept = spec.strength_at(index) if spec.kind == "concept" else 0.0
    f = _draw(np.random.default_rng([seed, index]), rows, covariate)
    label = (f["label_u"] < _probability(f, concept)).astype(np.int64)
    micros = index * _MICROS_PER_DAY + f["hour"] * 3_600_000_000 + f["micros_in_hour"]
    order = np.argsort(micros, kind="stable")
    prefix = f"tx-{seed}-{index:05d}-"
    columns: dict[str, Any] = {
        ID_COLUMN: pd.Series([f"{prefix}{j:07d}" for j in range(rows)], dtype="str"),
        TIME_COLUMN: pd.Series(EPOCH + pd.to_timedelta(micros[order], unit="us")).astype("datetime64[us, UTC]"),
    }
    for name in NUMERIC_FEATURES:
        columns[name] = f[name][order]
    for name, categories in CATEGORICAL_VALUES.items():
        columns[name] = pd.Series(np.asarray(categories, dtype=object)[f[name][order]], dtype="str")
    columns[TARGET] = label[order]
    return pd.DataFrame(columns)


# -- faults ---------------------------------------------------------------------------
def _some(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Sorted row positions: ``fraction`` of ``n`` rows, at least one when ``n > 0``."""
    k = min(n, max(1, round(fraction * n))) if n else 0
    return np.sort(rng.choice(n, size=k, replace=False))


def _nulls(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    for column in NULL_FAULT_COLUMNS:
        hit = np.zeros(len(frame), dtype=bool)
        hit[_some(rng, len(frame), NULL_FAULT_FRACTION)] = True
        values = frame[column]
        if pd.api.types.is_integer_dtype(values):
            values = values.astype("float64")  # as a writer without nullable ints would store it
        frame[column] = values.mask(hit)
    return frame


def _wrong_dtype(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    text = frame["amount"].map(repr).astype(object)
    text.iloc[_some(rng, len(frame), FAULT_FRACTION)] = "n/a"
    frame["amount"] = text.astype("str")
    return frame


def _out_of_range(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    negative = _some(rng, len(frame), FAULT_FRACTION)
    frame.loc[negative, "amount"] = -frame.loc[negative, "amount"]
    risky = _some(rng, len(frame), FAULT_FRACTION)
    frame.loc[risky, "merchant_risk"] = frame.loc[risky, "merchant_risk"] + 1.0
    return frame


def _duplicates(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    copies = frame.iloc[_some(rng, len(frame), DUPLICATE_FRACTION)]
    both = pd.concat([frame, copies], ignore_index=True)
    return both.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)


def _unseen_label(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame.loc[_some(rng, len(frame), FAULT_FRACTION), TARGET] = UNSEEN_LABEL
    return frame


def _inf_values(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame.loc[_some(rng, len(frame), FAULT_FRACTION), "amount"] = np.inf
    frame.loc[_some(rng, len(frame), FAULT_FRACTION), "distance_from_home_km"] = -np.inf
    return frame


def _extra_column(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    codes = np.asarray(["", "SPRING10", "WELCOME", "FREESHIP"], dtype=object)
    frame[EXTRA_COLUMN] = pd.Series(codes[rng.integers(0, len(codes), len(frame))], dtype="str")
    return frame


_FRAME_FAULTS: dict[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]] = {
    "nulls": _nulls,
    "missing_column": lambda frame, rng: frame.drop(columns=[DROPPED_COLUMN]),
    "extra_column": _extra_column,
    "renamed_column": lambda frame, rng: frame.rename(columns={RENAMED_COLUMN[0]: RENAMED_COLUMN[1]}),
    "wrong_dtype": _wrong_dtype,
    "out_of_range": _out_of_range,
    "duplicates": _duplicates,
    "missing_label": lambda frame, rng: frame.drop(columns=[TARGET]),
    "unseen_label": _unseen_label,
    "inf_values": _inf_values,
    "all_null_column": lambda frame, rng: frame.assign(**{DROPPED_COLUMN: np.nan}),
}
_FILE_FAULTS = frozenset({"truncated", "garbage", "empty", "bom_csv"})


def _check_fault(fault: str) -> None:
    if fault != "none" and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected none or one of: {', '.join(FAULTS)}")


def _fault_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, _FAULT_SALT])


def inject_fault(frame: pd.DataFrame, fault: str, seed: int = 0, index: int = 0) -> pd.DataFrame:
    """A copy of ``frame`` with a frame-level fault (file-level faults return it unchanged).

    Raises:
        ValueError: ``fault`` is not ``"none"`` or one of ``FAULTS``.
    """
    _check_fault(fault)
    injector = _FRAME_FAULTS.get(fault)
    if injector is None:
        return frame.copy()
    return injector(frame.copy(), _fault_rng(seed, index))


# -- files ----------------------------------------------------------------------------
def batch_file_name(index: int, fmt: str, fault: str = "none") -> str:
    """``batch-00003.parquet``: zero-padded so names sort in stream order."""
    return f"batch-{index:05d}.{'csv' if fault == 'bom_csv' else fmt}"


def _arrow_array(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        # pyarrow 25 + pandas 3.1: converting tz-aware values directly goes through the
        # deprecated ``Series.values``; hand Arrow naive UTC values and the zone instead.
        naive = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return pa.array(naive, type=pa.timestamp(series.dtype.unit, tz="UTC"))
    return pa.array(series.array)


def encode(frame: pd.DataFrame, fmt: str) -> bytes:
    """Parquet or CSV bytes of ``frame`` (deterministic: same frame, same bytes).

    Parquet is written from Arrow arrays directly (no pandas metadata); CSV uses ``\\n``
    line endings, no index, ISO timestamps.
    """
    if fmt == "parquet":
        table = pa.table({str(c): _arrow_array(frame[c]) for c in frame.columns})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="snappy")
        return buffer.getvalue()
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _file_fault(raw: bytes, fault: str, rng: np.random.Generator) -> bytes:
    if fault == "empty":
        return b""
    if fault == "garbage":
        # Never valid UTF-8 (0xff cannot appear in it) and never a parquet magic number.
        return b"\xff\xfe\x00" + rng.bytes(max(1024, len(raw) // 4))
    if fault == "truncated":
        cut = max(1, int(len(raw) * TRUNCATE_AT))
        while cut > 1 and raw[cut - 1 : cut] == b"\n":
            cut -= 1  # a CSV cut right after a line break would look complete
        return raw[:cut]
    if fault == "bom_csv":
        return codecs.BOM_UTF8 + raw
    return raw


def batch_bytes(
    index: int,
    rows: int,
    seed: int,
    *,
    drift: DriftSpec | str | None = None,
    fault: str = "none",
    fmt: str = "parquet",
    with_label: bool = True,
) -> tuple[str, bytes]:
    """The file name and bytes of batch ``index`` as it lands (fault included).

    Args:
        index: the batch's position in the stream.
        rows: transactions before any fault (``duplicates`` adds rows).
        seed: the stream seed.
        drift: a ``DriftSpec`` or its text form.
        fault: ``"none"`` or one of ``FAULTS``.
        fmt: ``"parquet"`` or ``"csv"`` (``bom_csv`` always writes CSV).
        with_label: False drops ``is_fraud`` (a batch whose labels come later).
    """
    _check_fault(fault)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    frame = inject_fault(generate_batch(index, rows, seed, drift), fault, seed, index)
    if not with_label:
        frame = frame.drop(columns=[TARGET], errors="ignore")
    written_as = "csv" if fault == "bom_csv" else fmt
    raw = _file_fault(encode(frame, written_as), fault, _fault_rng(seed, index))
    return batch_file_name(index, fmt, fault), raw


def _write(path: Path, raw: bytes) -> None:
    """Write via a hidden temporary name, so a landing-zone reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(raw)
    os.replace(temporary, path)


def write_batches(
    out_dir: str | os.PathLike[str],
    batches: int,
    rows: int,
    seed: int,
    drift: DriftSpec | str | None = None,
    fault: str = "none",
    fmt: str = "parquet",
    start: int = 0,
    label_delay: int = 0,
) -> list[Path]:
    """Write batches ``start .. start + batches - 1`` into ``out_dir``, one file each.

    Args:
        out_dir: a local folder (created if missing).
        batches: how many batch files.
        rows: rows per batch.
        seed: the stream seed.
        drift: a ``DriftSpec`` or its text form (``"concept:1@3"``).
        fault: ``"none"`` or one of ``FAULTS``, applied to every batch written.
        fmt: ``"parquet"`` or ``"csv"``.
        start: index of the first batch.
        label_delay: batches before a batch's labels arrive; > 0 writes batch files
            without ``is_fraud`` and ``labels/labels-<i>.<fmt>`` when batch ``i + delay`` is written.

    Returns:
        The paths written, in the order written (a batch file, then the labels due with it).

    Raises:
        ValueError: a bad argument, or a label fault combined with a label delay.
    """
    if batches < 0 or start < 0 or label_delay < 0:
        raise ValueError(f"batches, start and label_delay must be >= 0 (got {batches}, {start}, {label_delay})")
    if label_delay and fault in LABEL_FAULTS:
        raise ValueError(f"fault {fault!r} changes labels, which label_delay > 0 moves to separate files")
    spec = DriftSpec.parse(drift)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index in range(start, start + batches):
        name, raw = batch_bytes(index, rows, seed, drift=spec, fault=fault, fmt=fmt, with_label=label_delay == 0)
        _write(folder / name, raw)
        written.append(folder / name)
        labeled = index - label_delay
        if label_delay and labeled >= 0:
            labels = generate_batch(labeled, rows, seed, spec)[[ID_COLUMN, TIME_COLUMN, TARGET]]
            (folder / "labels").mkdir(exist_ok=True)
            path = folder / "labels" / f"labels-{labeled:05d}.{fmt}"
            _write(path, encode(labels, fmt))
            written.append(path)
    logger.debug("wrote %d files to %s (seed=%d, drift=%s, fault=%s)", len(written), folder, seed, spec, fault)
    return written


def stream_data_config(**overrides: Any) -> DataConfig:
    """The ``data`` section that describes this stream (ids, time, ranges, value sets, labels).

    ``payment_gateway`` has no value set on purpose: a new gateway is covariate drift
    for the monitor to see, not a data-quality fault to quarantine.

    Args:
        overrides: ``DataConfig`` fields to replace (e.g. ``schema=FEATURE_DTYPES``).
    """
    fields: dict[str, Any] = {
        "target": TARGET,
        "task": "binary",
        "time_column": TIME_COLUMN,
        "id_columns": [ID_COLUMN],
        "expectations": Expectations(
            ranges={
                "amount": (0.0, 100_000.0),
                "hour": (0.0, 23.0),
                "merchant_risk": (0.0, 1.0),
                "distance_from_home_km": (0.0, 20_040.0),
                "card_age_days": (0.0, 36_500.0),
                "txn_count_24h": (0.0, 10_000.0),
                "customer_age": (18.0, 120.0),
            },
            value_sets={
                "channel": list(CHANNELS),
                "merchant_category": list(MERCHANT_CATEGORIES),
                "country": list(COUNTRIES),
            },
            label_values=[0, 1],
        ),
    }
    fields.update(overrides)
    return DataConfig.model_validate(fields)
