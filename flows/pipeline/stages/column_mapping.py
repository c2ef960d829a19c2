"""Column mapping: which unknown column of a batch is a known one renamed, and the evidence for it.

Pure functions, no I/O. ``match_renames`` compares every column of a batch the schema
does not know with every known feature column the batch lacks, on three pieces of
evidence:

* name similarity: ``difflib.SequenceMatcher`` ratio of the lower-cased names
  (``amount`` / ``amount_v2``: 0.80, ``amount`` / ``amt``: 0.67, ``amount`` / ``fare``: 0.20);
* value overlap: the share of the batch column's values a known column could hold
  (numbers: within the range the known column took in the reference; others: among
  its known values);
* distance: the two-sample Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``)
  between the batch column and the known column's last-good values (for text and
  bool columns, the total variation distance between their value frequencies).

A pair whose values fit (overlap and distance within the thresholds) is a
*candidate*; each unknown column is paired with at most one known column and vice
versa, best name first. A pair is *auto* (a repair may apply it without a person)
when its name is similar enough too and the sample is big enough to judge; a
genuinely different column (values that do not fit) is never paired, whatever its
name. ``apply_renames`` is what the pipeline's landing stage does with the mappings
recorded so far.

Example:
    >>> found = match_renames(frame, {"amount": "float64"}, {"amount": last_good}, SchemaMatchThresholds())
    >>> found.renames, found.auto
    ({'amount_v2': 'amount'}, True)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from flows.config import SchemaMatchThresholds


@dataclass(frozen=True)
class ColumnEvidence:
    """Why batch column ``source`` is (or is not) the known column ``target``."""

    source: str
    target: str
    name_similarity: float
    value_overlap: float
    distance: float
    distance_kind: str
    """``ks`` (Kolmogorov-Smirnov statistic) or ``tv`` (total variation of value frequencies)."""
    rows: int
    fits: bool
    """The values fit: overlap and distance within the thresholds."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "name_similarity": round(self.name_similarity, 4),
            "value_overlap": round(self.value_overlap, 4),
            "distance": round(self.distance, 4),
            "distance_kind": self.distance_kind,
            "rows": self.rows,
            "fits": self.fits,
        }

    def line(self) -> str:
        return (
            f"{self.source} -> {self.target} (name {self.name_similarity:.2f}, overlap {self.value_overlap:.2f}, "
            f"{self.distance_kind} {self.distance:.3f}, {self.rows} rows)"
        )


@dataclass(frozen=True)
class RenameMatch:
    """What ``match_renames`` found for one batch.

    Attributes:
        renames: batch column -> known column, for every paired column.
        evidence: the paired columns' evidence, then the best rejected pair of every missing column.
        auto: every pair is above the auto thresholds (a repair may apply it unattended).
        unmatched: known columns the batch lacks that no batch column fits.
        held: why a person must approve (empty when ``auto``).
    """

    renames: dict[str, str] = field(default_factory=dict)
    evidence: list[ColumnEvidence] = field(default_factory=list)
    auto: bool = False
    unmatched: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def name_similarity(a: str, b: str) -> float:
    """difflib's ratio of the two lower-cased names (0: nothing in common, 1: equal)."""
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _numeric(values: pd.Series) -> np.ndarray | None:
    """The finite numbers of ``values``; None when most of it is not numbers (then it is no number column)."""
    present = values.dropna()
    if present.empty or present.dtype.kind == "b":
        return None
    numbers = pd.to_numeric(present, errors="coerce").astype("float64")
    if numbers.isna().mean() > 0.5:
        return None
    array = numbers.to_numpy()
    return array[np.isfinite(array)]


def _compare_numbers(batch: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(reference)), float(np.max(reference))
    overlap = float(np.mean((batch >= low) & (batch <= high)))
    return overlap, float(ks_2samp(batch, reference).statistic)


def _compare_values(batch: pd.Series, reference: np.ndarray) -> tuple[float, float]:
    mine = batch.dropna().astype(str).value_counts(normalize=True)
    known = pd.Series(reference).dropna().astype(str).value_counts(normalize=True)
    overlap = float(mine[mine.index.isin(known.index)].sum())
    both = mine.index.union(known.index)
    distance = 0.5 * float(np.abs(mine.reindex(both, fill_value=0) - known.reindex(both, fill_value=0)).sum())
    return overlap, distance


def column_evidence(
    source: str,
    values: pd.Series,
    target: str,
    dtype: str,
    reference: np.ndarray,
    thresholds: SchemaMatchThresholds,
) -> ColumnEvidence:
    """The evidence that batch column ``source`` (its ``values``) is the known ``target`` of ``dtype``."""
    similarity = name_similarity(source, target)
    rows = int(values.notna().sum())
    if dtype in ("float64", "int64"):
        numbers, known = _numeric(values), _numeric(pd.Series(reference))
        if numbers is None or known is None or not len(numbers) or not len(known):
            return ColumnEvidence(source, target, similarity, 0.0, 1.0, "ks", rows, False)
        overlap, distance = _compare_numbers(numbers, known)
        kind = "ks"
    else:
        overlap, distance = _compare_values(values, reference)
        kind = "tv"
    fits = rows > 0 and overlap >= thresholds.min_value_overlap and distance <= thresholds.max_ks_distance
    return ColumnEvidence(source, target, similarity, overlap, distance, kind, rows, fits)


def match_renames(
    frame: pd.DataFrame,
    schema: Mapping[str, str],
    reference: Mapping[str, np.ndarray],
    thresholds: SchemaMatchThresholds,
    other_known: Iterable[str] = (),
) -> RenameMatch:
    """Pair the batch's unknown columns with the known feature columns it lacks (see the module doc).

    Args:
        frame: the batch as read.
        schema: the locked feature schema (column -> dtype).
        reference: per known feature, its last-good values (a column without any cannot be matched).
        thresholds: ``healing.schema_match``.
        other_known: the other columns the batch may hold (target, time, ids): never renamed.
    """
    known = {*schema, *other_known}
    missing = [c for c in schema if c not in frame.columns and c in reference]
    unknown = [str(c) for c in frame.columns if str(c) not in known]
    if not missing or not unknown:
        return RenameMatch(unmatched=[c for c in schema if c not in frame.columns])
    pairs = [column_evidence(u, frame[u], m, schema[m], reference[m], thresholds) for m in missing for u in unknown]
    chosen: list[ColumnEvidence] = []
    for pair in sorted((p for p in pairs if p.fits), key=lambda p: (-p.name_similarity, p.distance)):
        if all(pair.source != c.source and pair.target != c.target for c in chosen):
            chosen.append(pair)
    taken = {c.target for c in chosen}
    rejected = [
        min((p for p in pairs if p.target == m), key=lambda p: (p.distance, -p.name_similarity))
        for m in missing
        if m not in taken
    ]
    held = [_held(c, pairs, thresholds) for c in chosen]
    held = [h for h in held if h]
    return RenameMatch(
        renames={c.source: c.target for c in chosen},
        evidence=chosen + rejected,
        auto=bool(chosen) and not held,
        unmatched=[c for c in schema if c not in frame.columns and c not in taken],
        held=held,
    )


def _held(pair: ColumnEvidence, pairs: list[ColumnEvidence], thresholds: SchemaMatchThresholds) -> str:
    """Why ``pair`` needs a person ("" when its evidence is above the auto thresholds)."""
    if pair.name_similarity < thresholds.min_name_similarity:
        return f"{pair.line()}: name similarity below {thresholds.min_name_similarity:g}"
    if pair.rows < thresholds.min_rows:
        return f"{pair.line()}: fewer than {thresholds.min_rows} values to judge by"
    rivals = [p for p in pairs if p.fits and p.source == pair.source and p.target != pair.target]
    if any(p.name_similarity >= thresholds.min_name_similarity for p in rivals):
        return f"{pair.line()}: its values fit {', '.join(p.target for p in rivals)} as well"
    return ""


def apply_renames(frame: pd.DataFrame, renames: Mapping[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with each recorded rename applied where the batch has the old name and not the known one.

    Returns the frame and one note per column renamed (a batch already carrying the known
    name keeps it: the recorded mapping was for an upstream that no longer renames).
    """
    applied = {s: t for s, t in renames.items() if s in frame.columns and t not in frame.columns}
    if not applied:
        return frame, []
    notes = [f"column {s!r} taken as {t!r} (recorded schema mapping)" for s, t in applied.items()]
    return frame.rename(columns=applied), notes
