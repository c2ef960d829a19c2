"""read_batch + validate_batch on every fault the generator makes, and what the lake keeps.

Each landing file goes where the pipeline would put it: refused batches into the
quarantine (raw bytes, reason, failure records), accepted ones into a real Delta
table keyed by the file's sha256, with every row accounted for.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from checkpoints import Lake
from flows.config import DataConfig, Expectations, SelfhealConfig
from flows.demo import data as dd
from flows.pipeline.exceptions import ValidationFailed
from flows.pipeline.stages import validate as v
from flows.pipeline.stages.batch_io import read_batch
from flows.pipeline.stages.validate import MAX_FAILURE_RECORDS, ValidationOutcome, infer_schema, validate_batch

SEED = 5
ROWS = 400
BRONZE = "bronze"

#: fault -> (decision, text the reason or notes must contain, or that text per format).
#: A fault the generator gains without an entry here fails this module's tests.
EXPECTED: dict[str, tuple[str, str | dict[str, str] | None]] = {
    "nulls": ("quarantine", "amount: null_fraction<=0.2 failed (observed 0.3)"),
    "missing_column": ("quarantine", "missing column(s): merchant_risk"),
    "extra_column": ("accept", "dropped unexpected column(s): promo_code"),
    "renamed_column": ("quarantine", "missing column(s): amount (unexpected column(s) present: amt; renamed?)"),
    "wrong_dtype": ("quarantine", "amount: dtype('float64') failed for 4 row(s), e.g. 'n/a'"),
    "out_of_range": ("quarantine", "merchant_risk: in_range(0.0, 1.0) failed for 4 row(s)"),
    "duplicates": ("accept", "dropped 12 duplicate row(s)"),
    "truncated": ("quarantine", "truncated"),
    "garbage": ("quarantine", {"parquet": "not a parquet file (no PAR1 magic number", "csv": "not UTF-8 text"}),
    "empty": ("quarantine", "empty file (0 bytes)"),
    "bom_csv": ("accept", None),
    "missing_label": ("quarantine", "missing column(s): is_fraud"),
    "unseen_label": ("quarantine", "is_fraud: isin([0, 1]) failed for 4 row(s), e.g. 2"),
    "inf_values": ("accept", "amount: 4 infinite value(s) counted as null"),
    "all_null_column": ("quarantine", "merchant_risk: not_all_null failed (all 400 values null)"),
}


@pytest.fixture(scope="module")
def cfg() -> SelfhealConfig:
    return SelfhealConfig(data=dd.stream_data_config())


@pytest.fixture(scope="module")
def locked(cfg: SelfhealConfig) -> ValidationOutcome:
    """The first clean batch: it locks the feature schema and the label classes."""
    outcome = validate_batch(dd.generate_batch(0, ROWS, SEED), cfg)
    assert outcome.accepted, outcome.reason
    return outcome


@dataclass
class Landed:
    raw: bytes
    sha256: str
    outcome: ValidationOutcome | None
    read_error: str | None


def land(lake: Lake, path: Path, cfg: SelfhealConfig, locked: ValidationOutcome) -> Landed:
    """What the pipeline does with one landing file: read, validate, then bronze or quarantine."""
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        frame = read_batch(raw, path.name, path.suffix.lstrip("."))
    except ValidationFailed as exc:
        failure = {"column": None, "check": "readable", "failure_case": str(exc), "index": None}
        lake.quarantine(raw, str(path), str(exc), [failure])
        return Landed(raw, sha256, None, str(exc))
    outcome = validate_batch(frame, cfg, locked.schema, known_labels=locked.labels)
    if outcome.accepted:
        assert outcome.data is not None
        lake.append(BRONZE, outcome.data, key=sha256)
    else:
        lake.quarantine(raw, str(path), outcome.reason, outcome.failures)
    return Landed(raw, sha256, outcome, None)


def test_every_fault_has_an_expected_decision() -> None:
    assert set(EXPECTED) == set(dd.FAULTS)


@pytest.mark.parametrize("fmt", dd.FORMATS)
@pytest.mark.parametrize("fault", dd.FAULTS)
def test_fault_is_decided_and_stored(
    tmp_path: Path, lake: Lake, cfg: SelfhealConfig, locked: ValidationOutcome, fault: str, fmt: str
) -> None:
    if fault not in EXPECTED:
        pytest.fail(f"fault {fault!r} has no expected decision in EXPECTED")
    decision, expected = EXPECTED[fault]
    text = expected[fmt] if isinstance(expected, dict) else expected
    [path] = dd.write_batches(tmp_path / "landing", batches=1, rows=ROWS, seed=SEED, fault=fault, fmt=fmt, start=1)
    landed = land(lake, path, cfg, locked)

    if decision == "quarantine":
        [record] = lake.quarantined()
        assert text is not None and text in record.reason
        assert record.sha256 == landed.sha256 and record.source == str(path)
        assert Path(record.stored_at).read_bytes() == landed.raw, "raw bytes kept unchanged"
        assert record.failures, "failure records kept with the reason"
        if landed.outcome is not None:
            assert not landed.outcome.accepted and landed.outcome.data is None
            assert record.failures == landed.outcome.failures
            assert len(record.failures) == min(landed.outcome.failure_count, MAX_FAILURE_RECORDS)
            json.dumps(landed.outcome.failures)  # JSON-able as they are
        assert not lake.exists(BRONZE)
        return

    outcome = landed.outcome
    assert outcome is not None and outcome.accepted and outcome.data is not None
    assert lake.quarantined() == []
    frame_in = read_batch(landed.raw, path.name, path.suffix.lstrip("."))
    assert outcome.rows_in == len(frame_in)
    assert outcome.rows_in == outcome.rows_out + sum(outcome.dropped.values()), "every row accounted for"
    bronze = lake.read(BRONZE).to_pandas()
    assert len(bronze) == outcome.rows_out
    assert list(bronze.columns) == list(dd.COLUMNS)
    assert set(bronze[dd.ID_COLUMN]) == set(frame_in[dd.ID_COLUMN]), "no transaction lost"
    assert lake.has_key(BRONZE, landed.sha256)
    if text is not None:
        assert any(text in note for note in outcome.notes), outcome.notes
    version = lake.version(BRONZE)
    assert lake.append(BRONZE, outcome.data, key=landed.sha256) == version, "a second landing writes nothing"
    assert lake.read(BRONZE).num_rows == outcome.rows_out


def test_csv_with_a_byte_order_mark_keeps_its_first_column(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    name, raw = dd.batch_bytes(1, ROWS, SEED, fault="bom_csv")
    assert raw.startswith(codecs.BOM_UTF8)
    header = raw.decode("utf-8").split("\n", 1)[0].split(",")
    assert header[0] == "\ufeff" + dd.ID_COLUMN, "what a reader that ignores the BOM sees"
    frame = read_batch(raw, name, "csv")
    assert frame.columns[0] == dd.ID_COLUMN
    outcome = validate_batch(frame, cfg, locked.schema)
    assert outcome.accepted and outcome.notes == []


def test_parquet_and_csv_batches_land_in_one_table(
    tmp_path: Path, lake: Lake, cfg: SelfhealConfig, locked: ValidationOutcome
) -> None:
    paths = dd.write_batches(tmp_path, batches=1, rows=ROWS, seed=SEED, fmt="parquet", start=1)
    paths += dd.write_batches(tmp_path, batches=1, rows=ROWS, seed=SEED, fmt="csv", start=2)
    for path in paths:
        assert land(lake, path, cfg, locked).outcome is not None
    assert lake.quarantined() == []
    assert lake.read(BRONZE).num_rows == 2 * ROWS
    bronze = lake.read(BRONZE).to_pandas().sort_values(dd.ID_COLUMN, ignore_index=True)
    from_csv = bronze[bronze[dd.ID_COLUMN].str.startswith(f"tx-{SEED}-00002-")].reset_index(drop=True)
    expected = validate_batch(dd.generate_batch(2, ROWS, SEED), cfg, locked.schema).data
    assert expected is not None
    pd.testing.assert_frame_equal(from_csv, expected, check_dtype=False)


@pytest.mark.slow
def test_a_million_row_batch_is_accepted(lake: Lake, cfg: SelfhealConfig) -> None:
    name, raw = dd.batch_bytes(0, 1_000_000, SEED)
    frame = read_batch(raw, name, "parquet")
    outcome = validate_batch(frame, cfg, dd.FEATURE_DTYPES)
    assert outcome.accepted, outcome.reason
    assert outcome.rows_out == 1_000_000 and outcome.failures == []
    lake.append(BRONZE, outcome.data, key=hashlib.sha256(raw).hexdigest())
    assert lake.read(BRONZE, columns=[dd.ID_COLUMN]).num_rows == 1_000_000


# -- the rules, one by one --------------------------------------------------------------
def _clean(index: int = 1, rows: int = ROWS) -> pd.DataFrame:
    return dd.generate_batch(index, rows, SEED)


def _groups(outcome: ValidationOutcome) -> set[tuple[str | None, str]]:
    return {(f["column"], f["check"]) for f in outcome.failures}


def test_schema_is_inferred_and_returned_when_none_is_locked(cfg: SelfhealConfig) -> None:
    outcome = validate_batch(_clean(), cfg)
    assert outcome.accepted
    assert outcome.schema == dd.FEATURE_DTYPES
    assert outcome.labels == [0, 1]
    assert any("inferred" in note for note in outcome.notes)
    assert infer_schema(_clean(), cfg) == dd.FEATURE_DTYPES


def test_every_failed_expectation_is_collected(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    frame = _clean().drop(columns=["hour"])
    frame.loc[:9, "merchant_risk"] = 3.0
    frame.loc[:199, "customer_age"] = np.nan
    frame.loc[0, "channel"] = "carrier_pigeon"
    frame.loc[5, dd.TARGET] = 7
    outcome = validate_batch(frame, cfg, locked.schema, known_labels=locked.labels)
    assert not outcome.accepted
    assert _groups(outcome) == {
        (None, "column_in_dataframe"),
        ("merchant_risk", "in_range(0.0, 1.0)"),
        ("customer_age", "null_fraction<=0.2"),
        ("channel", "isin(['pos', 'online', 'atm', 'moto'])"),
        (dd.TARGET, "isin([0, 1])"),
    }
    assert outcome.reason.startswith("5 expectation(s) failed: ")
    assert {
        "column": "channel",
        "check": "isin(['pos', 'online', 'atm', 'moto'])",
        "failure_case": "carrier_pigeon",
        "index": 0,
    } in outcome.failures
    assert outcome.failure_count == 1 + 10 + 1 + 1 + 1
    with pytest.raises(ValidationFailed, match="5 expectation"):
        outcome.raise_if_rejected()


def test_failure_records_are_capped_but_counted(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    frame = _clean(rows=3000)
    frame.loc[:599, "amount"] = -1.0
    frame.loc[:99, "merchant_risk"] = 2.0
    outcome = validate_batch(frame, cfg, locked.schema)
    assert outcome.failure_count == 700
    assert len(outcome.failures) == MAX_FAILURE_RECORDS
    assert _groups(outcome) == {("amount", "in_range(0.0, 100000.0)"), ("merchant_risk", "in_range(0.0, 1.0)")}


@pytest.mark.parametrize(("extra_copies", "accepted"), [(20, True), (40, False)])
def test_duplicates_are_dropped_up_to_the_threshold(
    cfg: SelfhealConfig, locked: ValidationOutcome, extra_copies: int, accepted: bool
) -> None:
    frame = _clean()
    frame = pd.concat([frame, frame.iloc[:extra_copies]], ignore_index=True)  # 4.8% and 9.1% of rows
    outcome = validate_batch(frame, cfg, locked.schema)
    assert outcome.accepted is accepted
    if accepted:
        assert outcome.dropped == {"duplicates": extra_copies} and outcome.rows_out == ROWS
        clean = validate_batch(_clean(), cfg, locked.schema).data
        assert outcome.data is not None and clean is not None
        pd.testing.assert_frame_equal(outcome.data, clean)
    else:
        assert "duplicate_fraction<=0.05 failed (observed 0.090909)" in outcome.reason


@pytest.mark.parametrize(
    ("id_columns", "handling", "accepted", "dropped"),
    [
        ([], None, True, 0),  # default without ids: identical records are legitimate, all kept
        ([dd.ID_COLUMN], None, False, 0),  # default with ids: a repeated id is a repeated record
        ([], "keep", True, 0),
        ([], "drop", True, 64),  # dropped and counted, whatever the share
        ([], "quarantine", False, 0),
    ],
)
def test_duplicate_handling_is_configured(
    locked: ValidationOutcome, id_columns: list[str], handling: str | None, accepted: bool, dropped: int
) -> None:
    frame = _clean()
    frame = pd.concat([frame, frame.iloc[:64]], ignore_index=True)  # 16% of rows are copies
    data = dd.stream_data_config(id_columns=id_columns)
    data.expectations = data.expectations.model_copy(update={"duplicates": handling})
    outcome = validate_batch(frame, data, locked.schema)
    assert outcome.accepted is accepted, outcome.reason
    if accepted:
        assert outcome.rows_out == len(frame) - dropped
        assert outcome.dropped == ({"duplicates": dropped} if dropped else {})
    else:
        assert "duplicate_fraction<=0.05 failed (observed 0.137931)" in outcome.reason


@pytest.mark.parametrize(("null_labels", "accepted"), [(40, True), (120, False)])
def test_null_labels_drop_rows_up_to_the_threshold(
    cfg: SelfhealConfig, locked: ValidationOutcome, null_labels: int, accepted: bool
) -> None:
    frame = _clean()
    frame[dd.TARGET] = frame[dd.TARGET].astype("float64")
    frame.loc[: null_labels - 1, dd.TARGET] = np.nan
    outcome = validate_batch(frame, cfg, locked.schema)
    assert outcome.accepted is accepted
    if accepted:
        assert outcome.dropped == {"null_label": null_labels}
        assert outcome.data is not None and outcome.data[dd.TARGET].dtype == np.int64
        assert f"dropped {null_labels} row(s) with a null 'is_fraud'" in outcome.notes
    else:
        assert "is_fraud: null_fraction<=0.2 failed (observed 0.3)" in outcome.reason


def test_an_unlabeled_batch_is_accepted_only_when_labels_come_later(
    cfg: SelfhealConfig, locked: ValidationOutcome
) -> None:
    frame = _clean().drop(columns=[dd.TARGET])
    assert not validate_batch(frame, cfg, locked.schema).accepted
    outcome = validate_batch(frame, cfg, locked.schema, require_label=False)
    assert outcome.accepted and outcome.labels is None
    assert outcome.data is not None and dd.TARGET not in outcome.data
    assert any("accepted unlabeled" in note for note in outcome.notes)


def test_unseen_classes_without_configured_label_values(cfg: SelfhealConfig) -> None:
    data = dd.stream_data_config(expectations=Expectations(label_values=None))
    frame = _clean()
    frame.loc[:2, dd.TARGET] = 2
    first = validate_batch(frame, data)  # nothing locked yet: binary allows two classes at most
    assert not first.accepted and "binary_classes<=2 failed (observed [0, 1, 2])" in first.reason
    later = validate_batch(frame, data, known_labels=[0, 1])
    assert not later.accepted and (dd.TARGET, "isin([0, 1])") in _groups(later)
    multiclass = dd.stream_data_config(task="multiclass", expectations=Expectations(label_values=None))
    assert validate_batch(frame, multiclass).labels == [0, 1, 2]
    assert not validate_batch(frame, multiclass, known_labels=[0, 1]).accepted


def test_lossless_coercions_are_applied(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    frame = _clean()
    frame["amount"] = frame["amount"].round().astype("int64")  # int where float is locked
    frame["card_age_days"] = frame["card_age_days"].astype("float64")  # integral floats where int is locked
    frame.loc[0, "card_age_days"] = np.nan
    frame["channel"] = frame["channel"].astype("category")
    outcome = validate_batch(frame, cfg, locked.schema)
    assert outcome.accepted, outcome.reason
    assert outcome.data is not None
    assert outcome.data["amount"].dtype == np.float64
    assert outcome.data["card_age_days"].dtype == "Int64"  # still holds a null: nullable int
    assert pd.api.types.is_string_dtype(outcome.data["channel"])
    assert pa.Table.from_pandas(outcome.data).schema.field("card_age_days").type == pa.int64()


def test_lossy_coercions_are_refused(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    frame = _clean()
    frame["card_age_days"] = frame["card_age_days"] + 0.5
    frame["hour"] = frame["hour"].astype("str")
    outcome = validate_batch(frame, cfg, locked.schema)
    assert not outcome.accepted
    assert ("card_age_days", "integral_values") in _groups(outcome)
    assert ("hour", "dtype('Int64')") in _groups(outcome)


def test_timestamps_are_carried_never_features(cfg: SelfhealConfig) -> None:
    data = dd.stream_data_config(time_column=None, id_columns=[])
    # A schema read back from a Delta table may list the timestamp as a string column.
    schema = {**dd.FEATURE_DTYPES, dd.TIME_COLUMN: "string", dd.ID_COLUMN: "string"}
    outcome = validate_batch(_clean(), data, schema)
    assert outcome.accepted, outcome.reason
    assert dd.TIME_COLUMN not in outcome.schema and outcome.schema[dd.ID_COLUMN] == "string"
    assert outcome.data is not None and str(outcome.data[dd.TIME_COLUMN].dtype) == "datetime64[us, UTC]"
    assert any("holds timestamps" in note for note in outcome.notes)


def test_time_and_id_columns_must_be_complete_and_parseable(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    frame = _clean()
    frame[dd.TIME_COLUMN] = frame[dd.TIME_COLUMN].astype("str")
    frame.loc[3, dd.TIME_COLUMN] = "yesterday-ish"
    frame.loc[4, dd.ID_COLUMN] = np.nan
    outcome = validate_batch(frame, cfg, locked.schema)
    assert not outcome.accepted
    assert _groups(outcome) == {(dd.TIME_COLUMN, "dtype('datetime64[us, UTC]')"), (dd.ID_COLUMN, "not_nullable")}
    assert {
        "column": dd.TIME_COLUMN,
        "check": "dtype('datetime64[us, UTC]')",
        "failure_case": "yesterday-ish",
        "index": 3,
    } in outcome.failures


def test_too_few_rows_is_refused(cfg: SelfhealConfig, locked: ValidationOutcome) -> None:
    outcome = validate_batch(_clean(rows=20), cfg, locked.schema)
    assert (
        not outcome.accepted and outcome.reason == "1 expectation(s) failed: batch: min_rows>=50 failed (observed 20)"
    )


def test_regression_labels_are_checked_as_numbers() -> None:
    data = DataConfig(
        target="spend", task="regression", expectations=Expectations(min_rows=1, ranges={"spend": (0, 10)})
    )
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "spend": [1, 5, 11]})
    outcome = validate_batch(frame, data)
    assert not outcome.accepted and ("spend", "in_range(0.0, 10.0)") in _groups(outcome)
    ok = validate_batch(frame.assign(spend=[1, 2, 3]), data)
    assert ok.accepted and ok.labels is None and ok.data is not None and ok.data["spend"].dtype == np.float64


def test_unsupported_dtypes_are_refused_on_inference(cfg: SelfhealConfig) -> None:
    frame = _clean().assign(window=pd.Timedelta(minutes=5))
    outcome = validate_batch(frame, cfg)
    assert not outcome.accepted and "window: dtype timedelta64" in outcome.reason
    with pytest.raises(ValueError, match="window"):
        infer_schema(frame, cfg)


def test_a_malformed_locked_schema_is_a_programming_error(cfg: SelfhealConfig) -> None:
    with pytest.raises(ValueError, match="unknown dtypes"):
        validate_batch(_clean(), cfg, {"amount": "decimal"})


def test_failure_values_are_json_scalars() -> None:
    assert v._jsonable(np.int64(3)) == 3 and isinstance(v._jsonable(np.int64(3)), int)
    assert v._jsonable(np.float64("nan")) is None and v._jsonable(pd.NA) is None
    assert v._jsonable(pd.Timestamp("2024-01-01", tz="UTC")) == "2024-01-01T00:00:00+00:00"
    assert v._jsonable(np.bool_(False)) is False
