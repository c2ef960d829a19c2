"""The golden sets and the verdicts of their replays: two small append-only tables.

``golden``: for each promoted model version, a stratified sample of its holdout with the
outputs the registered artifact gave on it when it was promoted (one row per record). A
set belongs to one version *and* its run: a version number deleted and registered again
names another model, whose set is another. A set is written once (key
``golden:<version>:<run>``) and never changed.

``golden_probes``: the verdicts of replaying a set against the live server. A row is
appended only when a version's verdict changes (its first probe, a pass after a failure,
a failure after a pass), so the table stays small while the newest row of a version is
its current verdict; what the batch-scoring gate reads.

Example:
    >>> freeze_set(lake, [GoldenRow("7", run_id, 0, {"amount": 12.5}, {"label": 1, "score": 0.93})])
    >>> golden_set(lake, "7", run_id)[0].expected["label"]
    1
    >>> record_probe(lake, GoldenProbe("7", now, passed=False, rows=100, differing=100, served_version="7"))
    >>> latest_probe(lake, "7").passed
    False
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from checkpoints.rows import from_row, to_table

if TYPE_CHECKING:
    from checkpoints.lake import Lake

GOLDEN = "golden"
GOLDEN_PROBES = "golden_probes"
#: The request ids (``X-Request-ID``) of golden replays: the monitor leaves their rows out of the live traffic.
PROBE_REQUEST_PREFIX = "golden-probe-"


@dataclass(frozen=True)
class GoldenRow:
    """One record of a version's golden set and what the version answered for it.

    Attributes:
        model_version: the registered version the set belongs to.
        run_id: that version's run (a reused version number is another model).
        row: the record's position in the set.
        record: the request record (feature -> value), exactly as it is sent to ``/predict``.
        expected: ``{"label": ..., "score": ...}`` computed from the registered artifact at promotion.
        frozen_at: when the set was frozen.
        source: where the records came from (e.g. ``holdout of silver v12``).
    """

    model_version: str
    run_id: str
    row: int
    record: dict[str, Any]
    expected: dict[str, Any]
    frozen_at: datetime | None = None
    source: str = ""


@dataclass(frozen=True)
class GoldenProbe:
    """A replay verdict for one version (appended when it differs from the version's last one).

    Attributes:
        model_version: the version whose set was replayed (the champion then).
        probed_at: when this verdict was first reached.
        passed: every served output matched the set.
        rows: records replayed.
        differing: records whose label differs or whose score is off by more than the tolerance.
        served_version: the version the server said answered.
        detail: one line a person can act on.
        first: the first few differing records (row, expected, served).
    """

    model_version: str
    probed_at: datetime
    passed: bool
    rows: int
    differing: int
    served_version: str
    detail: str = ""
    first: list[dict[str, Any]] = field(default_factory=list)


def freeze_set(lake: Lake, rows: Sequence[GoldenRow]) -> bool:
    """Append a version's golden set exactly once; False when it was frozen before (nothing written)."""
    if not rows:
        raise ValueError("a golden set needs at least one row")
    first = rows[0]
    if any(r.model_version != first.model_version or r.run_id != first.run_id for r in rows):
        raise ValueError("a golden set belongs to one model version and run")
    return not lake.append_once(
        GOLDEN, to_table(list(rows)), key=f"golden:{first.model_version}:{first.run_id}"
    ).duplicate


def golden_set(lake: Lake, version: str, run_id: str) -> list[GoldenRow]:
    """The golden set of ``version`` (of run ``run_id``), in row order; empty when none was frozen."""
    found = lake.scan(GOLDEN, pc.field("model_version") == version)  # None: no table yet
    if found is None:
        return []
    rows = [from_row(GoldenRow, r) for r in found.to_pylist()]
    return sorted((r for r in rows if r.run_id == run_id), key=lambda r: r.row)


def latest_probe(lake: Lake, version: str) -> GoldenProbe | None:
    """The current replay verdict of ``version`` (None: never probed)."""
    found = lake.scan(GOLDEN_PROBES, pc.field("model_version") == version)
    if found is None or found.num_rows == 0:
        return None
    probes = [from_row(GoldenProbe, r) for r in found.to_pylist()]
    return max(probes, key=lambda p: p.probed_at)


def record_probe(lake: Lake, probe: GoldenProbe) -> bool:
    """Append ``probe`` when its verdict differs from the version's last one; whether it was appended."""
    last = latest_probe(lake, probe.model_version)
    if last is not None and last.passed == probe.passed:
        return False
    key = f"golden-probe:{probe.model_version}:{probe.probed_at.isoformat()}"
    lake.append_once(GOLDEN_PROBES, to_table([probe]), key=key)
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _close(expected: Any, served: Any, tolerance: float) -> bool:
    if expected is None or served is None:
        return expected is None and served is None
    if not (_number(expected) and _number(served)):
        return False
    if math.isnan(expected) or math.isnan(served):
        return math.isnan(expected) and math.isnan(served)
    return abs(float(expected) - float(served)) <= tolerance


def compare(
    expected: Sequence[GoldenRow],
    labels: Sequence[Any],
    scores: Sequence[Any] | None,
    tolerance: float,
) -> list[dict[str, Any]]:
    """The golden records the served outputs disagree with: labels exactly, scores within ``tolerance``.

    A regression set (no frozen score) compares its values within ``tolerance``. A served
    answer with fewer or more rows than the set differs on every row.

    Example:
        >>> compare(rows, labels=[1, 0], scores=[0.9, 0.2], tolerance=1e-6)
        []
    """
    if len(labels) != len(expected) or (scores is not None and len(scores) != len(expected)):
        return [{"row": r.row, "expected": r.expected, "served": "no answer for it"} for r in expected]
    differences = []
    for i, row in enumerate(expected):
        want_label, want_score = row.expected.get("label"), row.expected.get("score")
        label, score = labels[i], scores[i] if scores is not None else None
        regression = want_score is None and _number(want_label)
        same_label = _close(want_label, label, tolerance) if regression else want_label == label
        if not same_label or not _close(want_score, score, tolerance):
            differences.append({"row": row.row, "expected": row.expected, "served": {"label": label, "score": score}})
    return differences
