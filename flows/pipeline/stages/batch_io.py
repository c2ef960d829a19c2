"""Batch files to DataFrames: parquet or CSV bytes in, a frame out, or one clear reason.

Reading is the first place a landing file can be refused: an empty file, a
parquet file cut short or not parquet at all, a CSV that is not UTF-8 text or
cannot be parsed. Each becomes ``ValidationFailed`` with a one-line reason the
quarantine record keeps; any other library error is translated here, once.

A CSV may start with a UTF-8 byte-order mark (Excel writes one): it is stripped,
so the first column keeps its name. A CSV that does not end with a line break is
treated as cut short (every writer ends its last row with one; a truncated copy
would otherwise parse "fine" with a damaged last row). Only empty cells and
``CSV_NULLS`` are read as null.
"""

from __future__ import annotations

import codecs
import io
import logging
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.pipeline.exceptions import ValidationFailed

logger = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
FORMATS = ("parquet", "csv")
#: The only CSV cells read as null. pandas' default list also turns "NA" (Namibia's
#: country code), "n/a", "None" and more into nulls; here they stay text, so a stray
#: marker in a number column is a dtype failure the validate stage reports.
CSV_NULLS = ("", "NaN", "nan", "NULL", "null")


def read_batch(raw: bytes, name: str, fmt: str) -> pd.DataFrame:
    """Parse one batch file.

    Args:
        raw: the whole file.
        name: its name or path (used in messages only).
        fmt: ``"parquet"`` or ``"csv"``.

    Returns:
        The rows, with a fresh ``RangeIndex`` (row positions in the file).

    Raises:
        ValidationFailed: the bytes are not a readable batch of that format.
        ValueError: ``fmt`` is not a known format.
    """
    _check(raw, name, fmt)
    frame = _read_parquet(raw, name) if fmt == "parquet" else _read_csv(raw, name)
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True)


def read_table(raw: bytes, name: str, fmt: str) -> pa.Table:
    """Parse one file to score (``flows.batch``): parquet as Arrow, a CSV's cells as text.

    The same checks as ``read_batch``; a CSV's columns are not guessed (the model's
    signature types each cell when it is checked), so ``007`` stays ``007`` in a text column.

    Raises:
        ValidationFailed: the bytes are not a readable file of that format.
        ValueError: ``fmt`` is not a known format.
    """
    _check(raw, name, fmt)
    if fmt == "parquet":
        return _parquet_table(raw, name)
    frame = _read_csv(raw, name, text=True)
    frame.columns = [str(c) for c in frame.columns]
    return pa.Table.from_pandas(frame, preserve_index=False)


def _check(raw: bytes, name: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown batch format {fmt!r}; expected one of {FORMATS}")
    if not raw:
        raise ValidationFailed(f"{name}: empty file (0 bytes)")


def _preview(raw: bytes) -> str:
    return repr(raw[:16])


def _parquet_table(raw: bytes, name: str) -> pa.Table:
    if raw[:4] != PARQUET_MAGIC:
        raise ValidationFailed(f"{name}: not a parquet file (no PAR1 magic number; starts with {_preview(raw)})")
    if len(raw) < 12 or raw[-4:] != PARQUET_MAGIC:
        raise ValidationFailed(f"{name}: truncated parquet file ({len(raw)} bytes, footer missing)")
    try:
        return pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValidationFailed(f"{name}: unreadable parquet file: {_one_line(exc)}") from exc


def _read_parquet(raw: bytes, name: str) -> pd.DataFrame:
    table = _parquet_table(raw, name)
    try:
        frame: pd.DataFrame = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValidationFailed(f"{name}: unreadable parquet file: {_one_line(exc)}") from exc
    if not isinstance(frame.index, pd.RangeIndex):
        # A pandas-written file may carry its index; a named one is data, keep it as a column.
        frame = frame.reset_index(drop=all(level is None for level in frame.index.names))
    return frame


def _read_csv(raw: bytes, name: str, *, text: bool = False) -> pd.DataFrame:
    """A CSV's rows; ``text``: every column as text (nulls as ``CSV_NULLS`` say), none guessed."""
    if raw.startswith(codecs.BOM_UTF8):
        logger.debug("%s: stripping a UTF-8 byte-order mark", name)
    try:
        with warnings.catch_warnings():
            # Rows longer than the header: pandas would silently turn the surplus into an
            # index (index_col=None) or drop it with a warning (index_col=False).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(raw),
                encoding="utf-8-sig",
                encoding_errors="strict",
                keep_default_na=False,
                na_values=list(CSV_NULLS),
                index_col=False,
                dtype=str if text else None,
            )
    except pd.errors.ParserWarning as exc:
        raise ValidationFailed(f"{name}: unparseable CSV: rows have more fields than the header") from exc
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start}); garbage bytes?") from exc
    except pd.errors.EmptyDataError as exc:
        raise ValidationFailed(f"{name}: CSV file has no header and no rows") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValidationFailed(f"{name}: unparseable CSV: {_one_line(exc)}") from exc
    if not raw.endswith(b"\n"):
        raise ValidationFailed(f"{name}: truncated CSV file (no line break after the last row)")
    return frame


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
