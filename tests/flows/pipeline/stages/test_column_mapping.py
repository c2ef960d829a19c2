"""Column mapping: a renamed column is paired with the known one by its values, never by its name alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.config import SchemaMatchThresholds
from flows.pipeline.stages.column_mapping import apply_renames, match_renames, name_similarity

SCHEMA = {"amount": "float64", "age": "float64", "channel": "string"}


def _reference(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "amount": rng.lognormal(3.0, 1.0, 5000),
        "age": rng.normal(45.0, 12.0, 5000),
        "channel": rng.choice(np.array(["web", "pos", "app"], dtype=object), 5000, p=[0.5, 0.3, 0.2]),
    }


def _batch(rng: np.random.Generator, n: int = 300) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0, 1.0, n),
            "age": rng.normal(45.0, 12.0, n),
            "channel": rng.choice(["web", "pos", "app"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def test_a_renamed_column_with_the_known_values_is_mapped_automatically() -> None:
    rng = np.random.default_rng(1)
    batch = _batch(rng).rename(columns={"amount": "amount_v2", "channel": "sales_channel"})
    found = match_renames(batch, SCHEMA, _reference(rng), SchemaMatchThresholds())
    assert found.renames == {"amount_v2": "amount", "sales_channel": "channel"}
    assert found.auto and not found.held and not found.unmatched
    amount = next(e for e in found.evidence if e.target == "amount")
    assert amount.distance_kind == "ks" and amount.distance < 0.1 and amount.value_overlap > 0.95


def test_a_renamed_column_with_other_values_is_not_mapped() -> None:
    rng = np.random.default_rng(2)
    batch = _batch(rng).rename(columns={"amount": "amount_v2"})
    batch["amount_v2"] = rng.normal(45.0, 12.0, len(batch))  # age-like values under an amount-like name
    found = match_renames(batch, SCHEMA, _reference(rng), SchemaMatchThresholds())
    assert found.renames == {} and found.unmatched == ["amount"]
    (rejected,) = found.evidence
    assert rejected.target == "amount" and not rejected.fits and rejected.name_similarity > 0.6


def test_a_rename_whose_name_differs_is_proposed_but_held_for_a_person() -> None:
    rng = np.random.default_rng(3)
    batch = _batch(rng).rename(columns={"amount": "fare"})
    found = match_renames(batch, SCHEMA, _reference(rng), SchemaMatchThresholds())
    assert found.renames == {"fare": "amount"} and not found.auto
    assert "name similarity below 0.6" in found.held[0]


def test_an_added_column_is_left_alone_and_too_few_rows_are_held() -> None:
    rng = np.random.default_rng(4)
    batch = _batch(rng, n=12).rename(columns={"age": "age_v2"})
    batch["discount"] = rng.normal(0.0, 1.0, len(batch))  # added, fits nothing missing
    found = match_renames(batch, SCHEMA, _reference(rng), SchemaMatchThresholds())
    assert found.renames == {"age_v2": "age"} and not found.auto
    assert "fewer than 30 values" in found.held[0]


def test_recorded_renames_apply_only_where_the_known_name_is_absent() -> None:
    frame = pd.DataFrame({"amount_v2": [1.0], "age": [2.0]})
    renamed, notes = apply_renames(frame, {"amount_v2": "amount", "age_v2": "age"})
    assert list(renamed.columns) == ["amount", "age"] and len(notes) == 1
    both = pd.DataFrame({"amount_v2": [1.0], "amount": [2.0]})
    kept, notes = apply_renames(both, {"amount_v2": "amount"})
    assert list(kept.columns) == ["amount_v2", "amount"] and notes == []
    assert round(name_similarity("amount", "amount_v2"), 2) == 0.8
