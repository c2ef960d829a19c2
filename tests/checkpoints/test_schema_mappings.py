"""Schema mappings on a real Delta table: recorded once, never two targets for one column."""

from __future__ import annotations

import pytest

from checkpoints import Lake
from checkpoints.schema_mappings import SCHEMA_MAPPINGS_TABLE, SchemaMapping, list_mappings, record_mapping, renames


def test_a_mapping_is_recorded_once_and_read_back(lake: Lake) -> None:
    assert renames(lake) == {} and list_mappings(lake) == []
    mapping = SchemaMapping("amount_v2", "amount", {"distance": 0.03, "fits": True}, "inc-1", "auto", "ab" * 32)
    assert record_mapping(lake, mapping) is True
    assert record_mapping(lake, mapping) is False  # a healer resuming after a crash records nothing twice
    assert lake.version(SCHEMA_MAPPINGS_TABLE) == 0
    (back,) = list_mappings(lake)
    assert (back.source, back.target, back.evidence, back.incident_id) == (
        "amount_v2",
        "amount",
        mapping.evidence,
        "inc-1",
    )
    assert renames(lake) == {"amount_v2": "amount"}


def test_a_column_cannot_map_to_two_known_columns_or_itself(lake: Lake) -> None:
    record_mapping(lake, SchemaMapping("amount_v2", "amount"))
    with pytest.raises(ValueError, match="already maps to 'amount'"):
        record_mapping(lake, SchemaMapping("amount_v2", "age"))
    with pytest.raises(ValueError, match="to itself"):
        record_mapping(lake, SchemaMapping("age", "age"))
    assert renames(lake) == {"amount_v2": "amount"}
