"""The demo stream: deterministic, realistic, learnable; drift and faults do what they claim."""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from flows.cli import main
from flows.demo import data as dd

SEED = 11
ROWS = 2000


def _matrix(frame: pd.DataFrame) -> pd.DataFrame:
    features = frame[list(dd.FEATURE_DTYPES)].copy()
    for column in dd.CATEGORICAL_FEATURES:
        features[column] = pd.Categorical(features[column], categories=[*dd.CATEGORICAL_VALUES[column]])
    return features


@pytest.fixture(scope="module")
def clean_model() -> HistGradientBoostingClassifier:
    """Gradient boosting trained on three clean batches (6,000 rows)."""
    train = pd.concat([dd.generate_batch(i, ROWS, SEED) for i in range(3)], ignore_index=True)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    return model.fit(_matrix(train), train[dd.TARGET])


def _auc(model: HistGradientBoostingClassifier, frame: pd.DataFrame) -> float:
    return float(roc_auc_score(frame[dd.TARGET], model.predict_proba(_matrix(frame))[:, 1]))


def _batches(first: int, count: int, drift: str = "none") -> pd.DataFrame:
    return pd.concat([dd.generate_batch(i, ROWS, SEED, drift) for i in range(first, first + count)], ignore_index=True)


# -- determinism ----------------------------------------------------------------------
def test_same_seed_and_index_give_the_same_rows() -> None:
    pd.testing.assert_frame_equal(dd.generate_batch(3, 500, SEED), dd.generate_batch(3, 500, SEED))
    assert not dd.generate_batch(3, 500, SEED).equals(dd.generate_batch(3, 500, SEED + 1))
    assert not dd.generate_batch(3, 500, SEED).equals(dd.generate_batch(4, 500, SEED))


@pytest.mark.parametrize("fmt", dd.FORMATS)
def test_files_are_byte_identical_across_runs(tmp_path: Path, fmt: str) -> None:
    first = dd.write_batches(tmp_path / "a", batches=3, rows=300, seed=SEED, drift="covariate:1@1", fmt=fmt)
    second = dd.write_batches(tmp_path / "b", batches=3, rows=300, seed=SEED, drift="covariate:1@1", fmt=fmt)
    assert [p.name for p in first] == [f"batch-0000{i}.{fmt}" for i in range(3)]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    other = dd.write_batches(tmp_path / "c", batches=1, rows=300, seed=SEED + 1, fmt=fmt)
    assert other[0].read_bytes() != first[0].read_bytes()
    assert not list((tmp_path / "a").glob(".*")), "no temporary files left behind"


def test_start_continues_the_stream(tmp_path: Path) -> None:
    whole = dd.write_batches(tmp_path / "whole", batches=4, rows=100, seed=SEED)
    dd.write_batches(tmp_path / "parts", batches=2, rows=100, seed=SEED)
    dd.write_batches(tmp_path / "parts", batches=2, rows=100, seed=SEED, start=2)
    assert [p.read_bytes() for p in whole] == [(tmp_path / "parts" / p.name).read_bytes() for p in whole]


# -- shape and realism ----------------------------------------------------------------
def test_columns_dtypes_ids_and_time() -> None:
    frame = dd.generate_batch(2, ROWS, SEED)
    assert tuple(frame.columns) == dd.COLUMNS
    assert str(frame[dd.TIME_COLUMN].dtype) == "datetime64[us, UTC]"
    assert frame[dd.TARGET].dtype == np.int64
    for column, dtype in dd.FEATURE_DTYPES.items():
        assert (dtype == "string" and pd.api.types.is_string_dtype(frame[column])) or frame[column].dtype == dtype
    assert frame[dd.ID_COLUMN].is_unique
    assert frame[dd.TIME_COLUMN].is_monotonic_increasing
    day = frame[dd.TIME_COLUMN].dt.floor("D").unique()
    assert list(day) == [dd.EPOCH + pd.Timedelta(days=2)]
    assert (frame["hour"] == frame[dd.TIME_COLUMN].dt.hour).all()
    assert not frame.isna().any().any()


def test_fraud_rate_is_realistic() -> None:
    frame = _batches(0, 10)
    assert 0.01 <= frame[dd.TARGET].mean() <= 0.03
    assert set(frame[dd.TARGET].unique()) == {0, 1}


def test_fraud_is_learnable(clean_model: HistGradientBoostingClassifier) -> None:
    assert _auc(clean_model, _batches(3, 3)) > 0.85


# -- drift ----------------------------------------------------------------------------
def test_covariate_drift_moves_features_into_a_region_the_old_model_ranks_wrong(
    clean_model: HistGradientBoostingClassifier,
) -> None:
    clean = _batches(3, 3)
    assert (clean["payment_gateway"] == dd.NEW_GATEWAY).sum() == 0
    shares, medians, aucs = [], [], []
    for magnitude in (0.5, 1.0, 2.0):
        drifted = _batches(3, 3, f"covariate:{magnitude}")
        shares.append(float((drifted["payment_gateway"] == dd.NEW_GATEWAY).mean()))
        medians.append(float(drifted["amount"].median()))
        aucs.append(_auc(clean_model, drifted))
        assert shares[-1] == pytest.approx(min(0.9, 0.3 * magnitude), abs=0.03)
        # Same P(fraud | x): the ground truth still explains the labels.
        assert drifted[dd.TARGET].mean() == pytest.approx(dd.fraud_probability(drifted).mean(), rel=0.2)
    assert shares == sorted(shares) and medians == sorted(medians)
    # The new gateway is a region no clean row shows: the model trained before the drift
    # feels it, the more the larger its share; one trained on the drifted stream does not.
    assert aucs == sorted(aucs, reverse=True) and aucs[1] < _auc(clean_model, clean) - 0.15
    train = _batches(10, 3, "covariate:1")
    retrained = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    retrained.fit(_matrix(train), train[dd.TARGET])
    assert _auc(retrained, _batches(3, 3, "covariate:1")) > aucs[1] + 0.15
    assert medians[0] > clean["amount"].median()
    moved = drifted[drifted["payment_gateway"] == dd.NEW_GATEWAY]
    assert (moved["channel"] == "online").mean() > (clean["channel"] == "online").mean() + 0.2


def test_concept_drift_keeps_features_and_changes_the_labels(clean_model: HistGradientBoostingClassifier) -> None:
    clean = _batches(3, 3)
    drifted = _batches(3, 3, "concept:1")
    features = [c for c in dd.COLUMNS if c != dd.TARGET]
    pd.testing.assert_frame_equal(clean[features], drifted[features])
    assert (clean[dd.TARGET] != drifted[dd.TARGET]).sum() > 0.5 * clean[dd.TARGET].sum()
    assert 0.01 <= drifted[dd.TARGET].mean() <= 0.03
    before, after = _auc(clean_model, clean), _auc(clean_model, drifted)
    assert after < 0.65 < 0.85 < before
    half = _auc(clean_model, _batches(3, 3, "concept:0.5"))
    assert after < half < before


def test_drift_starts_at_its_onset() -> None:
    spec = "covariate:2@5"
    pd.testing.assert_frame_equal(dd.generate_batch(4, 300, SEED, spec), dd.generate_batch(4, 300, SEED))
    assert not dd.generate_batch(5, 300, SEED, spec).equals(dd.generate_batch(5, 300, SEED))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", dd.DriftSpec()),
        ("", dd.DriftSpec()),
        ("covariate", dd.DriftSpec("covariate", 1.0, 0)),
        ("covariate:1.5", dd.DriftSpec("covariate", 1.5, 0)),
        ("Concept:0.5@3", dd.DriftSpec("concept", 0.5, 3)),
        ("concept@2", dd.DriftSpec("concept", 1.0, 2)),
    ],
)
def test_drift_spec_parses(text: str, expected: dd.DriftSpec) -> None:
    assert dd.DriftSpec.parse(text) == expected
    assert dd.DriftSpec.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sideways:1", "unknown kind 'sideways'"),
        ("covariate:abc", "magnitude must be a number"),
        ("covariate:1@x", "onset an integer"),
        ("covariate:-1", "finite number >= 0"),
        ("concept:nan", "finite number >= 0"),
        ("covariate:1@-2", "onset must be a batch index >= 0"),
        ("none:2", "takes no magnitude"),
    ],
)
def test_bad_drift_strings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dd.DriftSpec.parse(text)


# -- faults ---------------------------------------------------------------------------
def _parquet(raw: bytes) -> pd.DataFrame:
    frame: pd.DataFrame = pq.read_table(pa.BufferReader(raw)).to_pandas()
    return frame


def _clean_bytes(fmt: str = "parquet") -> bytes:
    return dd.batch_bytes(1, ROWS, SEED, fmt=fmt)[1]


def _check_nulls(raw: bytes) -> None:
    frame = _parquet(raw)
    for column in dd.NULL_FAULT_COLUMNS:
        assert frame[column].isna().mean() == pytest.approx(dd.NULL_FAULT_FRACTION)
    assert frame.drop(columns=list(dd.NULL_FAULT_COLUMNS)).notna().all().all()


def _check_missing_column(raw: bytes) -> None:
    assert set(dd.COLUMNS) - set(_parquet(raw).columns) == {dd.DROPPED_COLUMN}


def _check_extra_column(raw: bytes) -> None:
    assert list(_parquet(raw).columns) == [*dd.COLUMNS, dd.EXTRA_COLUMN]


def _check_renamed_column(raw: bytes) -> None:
    old, new = dd.RENAMED_COLUMN
    columns = list(_parquet(raw).columns)
    assert new in columns and old not in columns


def _check_wrong_dtype(raw: bytes) -> None:
    amount = _parquet(raw)["amount"]
    assert pd.api.types.is_string_dtype(amount)
    assert (amount == "n/a").sum() == round(ROWS * dd.FAULT_FRACTION)
    assert pd.to_numeric(amount[amount != "n/a"]).notna().all()


def _check_out_of_range(raw: bytes) -> None:
    frame = _parquet(raw)
    expected = round(ROWS * dd.FAULT_FRACTION)
    assert (frame["amount"] < 0).sum() == expected
    assert (frame["merchant_risk"] > 1).sum() == expected


def _check_duplicates(raw: bytes) -> None:
    frame = _parquet(raw)
    assert len(frame) == ROWS + round(ROWS * dd.DUPLICATE_FRACTION)
    assert frame.duplicated().sum() == round(ROWS * dd.DUPLICATE_FRACTION)
    assert frame[dd.TIME_COLUMN].is_monotonic_increasing


def _check_truncated(raw: bytes) -> None:
    clean = _clean_bytes()
    assert raw == clean[: len(raw)] and len(raw) == int(len(clean) * dd.TRUNCATE_AT)
    with pytest.raises(pa.ArrowInvalid):
        _parquet(raw)


def _check_garbage(raw: bytes) -> None:
    assert len(raw) >= 1024 and not raw.startswith(b"PAR1")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")


def _check_empty(raw: bytes) -> None:
    assert raw == b""


def _check_bom_csv(raw: bytes) -> None:
    assert raw == codecs.BOM_UTF8 + _clean_bytes("csv")
    assert pd.read_csv(io.BytesIO(raw), encoding="utf-8-sig").columns[0] == dd.ID_COLUMN


def _check_missing_label(raw: bytes) -> None:
    assert set(dd.COLUMNS) - set(_parquet(raw).columns) == {dd.TARGET}


def _check_unseen_label(raw: bytes) -> None:
    labels = _parquet(raw)[dd.TARGET]
    assert (labels == dd.UNSEEN_LABEL).sum() == round(ROWS * dd.FAULT_FRACTION)


def _check_inf_values(raw: bytes) -> None:
    frame = _parquet(raw)
    assert np.isposinf(frame["amount"]).sum() == round(ROWS * dd.FAULT_FRACTION)
    assert np.isneginf(frame["distance_from_home_km"]).sum() == round(ROWS * dd.FAULT_FRACTION)


def _check_all_null_column(raw: bytes) -> None:
    frame = _parquet(raw)
    assert frame[dd.DROPPED_COLUMN].isna().all()
    assert frame.drop(columns=[dd.DROPPED_COLUMN]).notna().all().all()


FAULT_CHECKS: dict[str, Callable[[bytes], None]] = {
    "nulls": _check_nulls,
    "missing_column": _check_missing_column,
    "extra_column": _check_extra_column,
    "renamed_column": _check_renamed_column,
    "wrong_dtype": _check_wrong_dtype,
    "out_of_range": _check_out_of_range,
    "duplicates": _check_duplicates,
    "truncated": _check_truncated,
    "garbage": _check_garbage,
    "empty": _check_empty,
    "bom_csv": _check_bom_csv,
    "missing_label": _check_missing_label,
    "unseen_label": _check_unseen_label,
    "inf_values": _check_inf_values,
    "all_null_column": _check_all_null_column,
}


def test_every_fault_has_a_check() -> None:
    assert set(FAULT_CHECKS) == set(dd.FAULTS)


@pytest.mark.parametrize("fault", dd.FAULTS)
def test_fault_is_really_in_the_file(tmp_path: Path, fault: str) -> None:
    if fault not in FAULT_CHECKS:
        pytest.fail(f"fault {fault!r} has no check in FAULT_CHECKS")
    [path] = dd.write_batches(tmp_path, batches=1, rows=ROWS, seed=SEED, fault=fault, start=1)
    assert path.name == ("batch-00001.csv" if fault == "bom_csv" else "batch-00001.parquet")
    raw = path.read_bytes()
    assert raw != _clean_bytes()
    FAULT_CHECKS[fault](raw)


def test_unknown_fault_and_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fault 'melted'"):
        dd.write_batches(tmp_path, 1, 10, SEED, fault="melted")
    with pytest.raises(ValueError, match="unknown format 'xlsx'"):
        dd.write_batches(tmp_path, 1, 10, SEED, fmt="xlsx")


# -- label delay ----------------------------------------------------------------------
def test_labels_arrive_after_the_delay(tmp_path: Path) -> None:
    first = dd.write_batches(tmp_path, batches=3, rows=200, seed=SEED, label_delay=2)
    names = [p.relative_to(tmp_path).as_posix() for p in first]
    assert names == ["batch-00000.parquet", "batch-00001.parquet", "batch-00002.parquet", "labels/labels-00000.parquet"]
    assert dd.TARGET not in _parquet(first[0].read_bytes())
    more = dd.write_batches(tmp_path, batches=1, rows=200, seed=SEED, start=3, label_delay=2)
    assert [p.relative_to(tmp_path).as_posix() for p in more] == ["batch-00003.parquet", "labels/labels-00001.parquet"]
    labels = _parquet((tmp_path / "labels" / "labels-00001.parquet").read_bytes())
    truth = dd.generate_batch(1, 200, SEED)
    assert list(labels.columns) == [dd.ID_COLUMN, dd.TIME_COLUMN, dd.TARGET]
    assert labels[dd.ID_COLUMN].tolist() == truth[dd.ID_COLUMN].tolist()
    assert labels[dd.TARGET].tolist() == truth[dd.TARGET].tolist()


def test_label_faults_cannot_be_combined_with_a_label_delay(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="changes labels"):
        dd.write_batches(tmp_path, 1, 10, SEED, fault="unseen_label", label_delay=1)


# -- CLI ------------------------------------------------------------------------------
def test_cli_writes_to_the_configured_landing_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text(yaml.safe_dump({"landing": {"path": "incoming", "format": "csv"}}))
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    code = main(["data", "generate", "--batches", "2", "--rows", "60", "--seed", "3", "--fault", "extra_column"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "incoming" / f"batch-0000{i}.csv") for i in range(2)]
    assert dd.EXTRA_COLUMN in pd.read_csv(printed[0]).columns


def test_cli_reports_a_bad_drift_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SELFHEAL_CONFIG", raising=False)
    assert main(["data", "generate", "--out", str(tmp_path / "out"), "--drift", "sideways"]) == 2
    assert "unknown kind 'sideways'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
