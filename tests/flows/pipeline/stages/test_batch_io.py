"""Batch files to frames: both formats, every unreadable file refused with one clear line."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.demo import data as dd
from flows.pipeline.exceptions import ValidationFailed
from flows.pipeline.stages.batch_io import read_batch

SEED = 5


@pytest.mark.parametrize(
    ("raw", "fmt", "message"),
    [
        (b"", "parquet", "empty file (0 bytes)"),
        (b"", "csv", "empty file (0 bytes)"),
        (b"transaction_id,amount\n", "parquet", "not a parquet file (no PAR1 magic number"),
        (b"PAR1" + b"\x00" * 64, "parquet", "truncated parquet file (68 bytes, footer missing)"),
        (b"PAR1" + b"\x00" * 64 + b"PAR1", "parquet", "unreadable parquet file"),
        (b"\xff\xfe\x00garbage\n", "csv", "not UTF-8 text"),
        (b'a,b\n"1,2\n', "csv", "unparseable CSV: Error tokenizing data"),
        (b"a,b\n1,2,3\n4,5\n", "csv", "rows have more fields than the header"),
        (b"a,b\n1,2\n3,", "csv", "truncated CSV file"),
        (b"\n\n", "csv", "no header and no rows"),
    ],
)
def test_unreadable_files_raise_validation_failed(raw: bytes, fmt: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=f"^batch-00009.{fmt}: ") as info:
        read_batch(raw, f"batch-00009.{fmt}", fmt)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_read_batch_round_trips_both_formats() -> None:
    frame = dd.generate_batch(1, 50, SEED)
    from_parquet = read_batch(dd.encode(frame, "parquet"), "b.parquet", "parquet")
    pd.testing.assert_frame_equal(from_parquet, frame)
    from_csv = read_batch(dd.encode(frame, "csv"), "b.csv", "csv")
    assert list(from_csv.columns) == list(frame.columns) and len(from_csv) == 50
    assert from_csv[dd.TARGET].tolist() == frame[dd.TARGET].tolist()


def test_csv_null_markers_stay_text() -> None:
    frame = read_batch(b"country,amount\nNA,1.5\n,2.5\nnull,n/a\n", "b.csv", "csv")
    assert frame["country"].tolist()[0] == "NA"  # Namibia, not a null
    assert frame["country"].isna().tolist() == [False, True, True]
    assert frame["amount"].tolist() == ["1.5", "2.5", "n/a"]


def test_parquet_with_a_pandas_index_keeps_named_index_as_a_column() -> None:
    buffer = io.BytesIO()
    pd.DataFrame({"a": [1, 2]}, index=pd.Index([10, 11], name="row_id")).to_parquet(buffer)
    frame = read_batch(buffer.getvalue(), "b.parquet", "parquet")
    assert frame.to_dict("list") == {"row_id": [10, 11], "a": [1, 2]}
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2]}), buffer)
    assert isinstance(read_batch(buffer.getvalue(), "b.parquet", "parquet").index, pd.RangeIndex)


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown batch format 'xlsx'"):
        read_batch(b"x", "b.xlsx", "xlsx")
