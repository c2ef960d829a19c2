"""Small inference_log / feedback / silver tables for monitor tests (the real writers come later)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from checkpoints import Lake

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
CATS = ["grocery", "travel", "online", "fuel"]
SHARES = [0.4, 0.3, 0.2, 0.1]


def features(rng: np.random.Generator, n: int, shift: float = 0.0, shares: list[float] | None = None) -> dict:
    return {
        "amount": rng.normal(50.0 + shift * 10.0, 10.0, n),
        "age": rng.normal(40.0, 12.0, n),
        "merchant": rng.choice(CATS, size=n, p=shares or SHARES).astype(object),
    }


def write_silver(lake: Lake, rng: np.random.Generator, n: int = 5000) -> int:
    cols = features(rng, n)
    cols["is_fraud"] = (rng.random(n) < 0.1).astype(np.int64)
    cols["_batch"] = ["b0"] * n
    return lake.append("silver", pa.table(cols))


def label_rule(amount: np.ndarray, age: np.ndarray, concept: bool) -> np.ndarray:
    score = (amount - 50.0) / 10.0 + (age - 40.0) / 12.0 * (-1.0 if concept else 1.0)
    return (score > 1.0).astype(np.float64)


def write_predictions(
    lake: Lake,
    rng: np.random.Generator,
    n: int,
    start: datetime,
    *,
    shift: float = 0.0,
    shares: list[float] | None = None,
    version: str = "1",
    prefix: str = "r",
    latency_ms: float = 20.0,
    served_by: str = "primary",
    seconds: float = 60.0,
    variant: str | None = None,
    inverted: bool = False,
) -> pa.Table:
    """``n`` predictions over ``seconds`` from ``start``; ``inverted``: a model that scores everything backwards."""
    cols = features(rng, n, shift, shares)
    amount, age = cols["amount"], cols["age"]
    truth_score = (amount - 50.0) / 10.0 + (age - 40.0) / 12.0
    pred = (truth_score > 1.0).astype(np.float64)
    score = 1.0 / (1.0 + np.exp(-(truth_score - 1.0) * 3.0))
    ts = [start + timedelta(seconds=seconds * i / n) for i in range(n)]
    table = pa.table(
        {
            **cols,
            "_request_id": [f"{prefix}{i}" for i in range(n)],
            "_ts": pa.array(ts, TS),
            "_model_version": [version] * n,
            "_served_by": [served_by] * n,
            "_prediction": 1.0 - pred if inverted else pred,
            "_score": 1.0 - score if inverted else score,
            "_latency_ms": rng.gamma(4.0, latency_ms / 4.0, n),
            "_variant": pa.array([variant] * n, pa.string()),
        }
    )
    lake.append("inference_log", table)
    return table


def write_feedback(
    lake: Lake, predictions: pa.Table, at: datetime, *, concept: bool = False, flip: float = 0.0
) -> None:
    amount = predictions.column("amount").to_numpy()
    age = predictions.column("age").to_numpy()
    label = label_rule(amount, age, concept)
    if flip:
        rng = np.random.default_rng(99)
        swap = rng.random(label.size) < flip
        label = np.where(swap, 1.0 - label, label)
    n = predictions.num_rows
    lake.append(
        "feedback",
        pa.table(
            {
                "request_id": predictions.column("_request_id"),
                "label": label,
                "ts": pa.array([at + timedelta(milliseconds=i) for i in range(n)], TS),
            }
        ),
    )
