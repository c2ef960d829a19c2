"""The suite's reports: the SLA table (text, markdown, HTML) and the ``chaos_runs`` Delta table.

Example:
    >>> print(render_table(result))
    >>> record_runs(Lake(cfg.lake.root), result, journals)
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from checkpoints import Lake
from flows.chaos_suite.journal import ExperimentResult, SuiteResult
from flows.chaos_suite.matrix import MatrixResult, as_expected

CHAOS_RUNS = "chaos_runs"
SCHEMA = pa.schema(
    [
        ("suite_run", pa.string()),
        ("experiment", pa.string()),
        ("title", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),
        ("deviated", pa.bool_()),
        ("verdict", pa.string()),
        ("mttr_seconds", pa.float64()),
        ("mttr_sla_seconds", pa.float64()),
        ("availability", pa.float64()),
        ("availability_sla", pa.float64()),
        ("rows_lost", pa.int64()),
        ("rows_lost_sla", pa.int64()),
        ("healing_enabled", pa.bool_()),
        ("failures", pa.string()),
        ("journal", pa.string()),
    ]
)
COLUMNS = ("fault", "class", "MTTR (s)", "SLA", "availability", "p99 (ms)", "rows lost", "verdict")
MATRIX_COLUMNS = (
    "fault",
    "class",
    "MTTR on (s)",
    "availability on",
    "p99 on (ms)",
    "rows lost on",
    "verdict on",
    "verdict off",
    "as its class says",
)
_VERDICT = {"met": "MET", "missed": "MISSED", "skipped": "skipped"}


def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _rows_text(r: ExperimentResult) -> str:
    text = _fmt(r.rows_lost, "d")
    return f"{text} (escalated, {r.rows_awaiting} rows awaiting a person)" if r.rows_awaiting else text


def _sla_text(r: ExperimentResult) -> str:
    parts = [f"MTTR <= {r.mttr_sla_seconds:g} s"]
    if r.availability_sla is not None:
        parts.append(f"availability >= {r.availability_sla:g}")
    if r.rows_lost_sla is not None:
        parts.append(f"rows lost <= {r.rows_lost_sla}")
    return ", ".join(parts)


def table_rows(result: SuiteResult) -> list[list[str]]:
    """One row of cells per experiment, in ``COLUMNS`` order."""
    return [
        [
            r.name,
            r.proves or "—",
            _fmt(r.mttr_seconds, ".1f"),
            _sla_text(r),
            _fmt(r.availability, ".4f"),
            _fmt(r.p99_ms, ".1f"),
            _rows_text(r),
            _VERDICT[r.verdict],
        ]
        for r in result.results
    ]


def matrix_rows(matrix: MatrixResult) -> list[list[str]]:
    """One row per experiment: the healing-on measurements, both verdicts, and whether they fit the class."""
    offs = {r.name: r for r in matrix.off.results}
    rows = []
    for r in matrix.on.results:
        off = offs.get(r.name)
        fits = (
            "—"
            if r.verdict == "skipped" or off is None or off.verdict == "skipped"
            else ("yes" if r.verdict == "met" and as_expected(off, healing=False) else "NO")
        )
        rows.append(
            [
                r.name,
                r.proves or "—",
                _fmt(r.mttr_seconds, ".1f"),
                _fmt(r.availability, ".4f"),
                _fmt(r.p99_ms, ".1f"),
                _rows_text(r),
                _VERDICT[r.verdict],
                _VERDICT[off.verdict] if off is not None else "—",
                fits,
            ]
        )
    return rows


def fixed_width(columns: Sequence[str], rows: list[list[str]]) -> str:
    """A table as fixed-width text (what the command line prints)."""
    rows = [list(columns), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_table(result: SuiteResult) -> str:
    """The SLA table as fixed-width text (what the command line prints)."""
    return fixed_width(COLUMNS, table_rows(result))


def render_matrix_table(matrix: MatrixResult) -> str:
    """The matrix (healing on and off side by side) as fixed-width text."""
    return fixed_width(MATRIX_COLUMNS, matrix_rows(matrix))


def matrix_verdict_line(matrix: MatrixResult) -> str:
    """One sentence: did every experiment get the verdicts its class calls for."""
    ran = [r for r in matrix.on.results if r.verdict != "skipped"]
    healed = sum(r.proves == "healed" for r in ran)
    if matrix.passed:
        return (
            f"All {len(ran)} experiments as their class says: {healed} healed (met with healing on, missed "
            f"without), {len(ran) - healed} absorbed (met both ways)."
        )
    return f"{len(matrix.problems)} experiment(s) not as their class says: " + "; ".join(matrix.problems) + "."


def render_matrix_markdown(matrix: MatrixResult) -> str:
    """The matrix report: both columns, then each pass's failures and unexpected incidents."""
    lines = [
        f"# Chaos matrix {matrix.on.run_id} (healing on) / {matrix.off.run_id} (healing off)",
        "",
        matrix_verdict_line(matrix),
        "",
        "`healed`: the healer must act (met with healing on, missed with healing off). `absorbed`: the design",
        "rides it out (met both ways). Availability and p99: every client request from the fault's injection",
        "to the verdict, outage included (healing on).",
        "",
        "| " + " | ".join(MATRIX_COLUMNS) + " |",
        "|" + "|".join("---" for _ in MATRIX_COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in matrix_rows(matrix)),
    ]
    for label, result in (("healing on", matrix.on), ("healing off", matrix.off)):
        for r in result.results:
            if r.failures and r.verdict != "skipped":
                lines += ["", f"## {r.name} ({label}): {r.verdict}", ""]
                lines += [f"- {failure}" for failure in r.failures]
    return "\n".join(lines) + "\n"


def verdict_line(result: SuiteResult) -> str:
    """One sentence: did every experiment meet its SLA, and if not which missed."""
    ran = [r for r in result.results if r.verdict != "skipped"]
    if result.passed:
        return f"All {len(ran)} experiments met their SLA (healing {'on' if result.healing_enabled else 'off'})."
    return (
        f"{len(result.missed)} of {len(ran)} experiments missed their SLA "
        f"(healing {'on' if result.healing_enabled else 'off'}): {', '.join(result.missed)}."
    )


def render_markdown(result: SuiteResult) -> str:
    """The report: the SLA table, then what went wrong where."""
    lines = [
        f"# Chaos suite {result.run_id}",
        "",
        verdict_line(result),
        "",
        "MTTR counts from the fault's injection to the moment every recovery condition held.",
        "Availability: share of the sandbox clients' predictions answered from the fault to the check",
        "(held to the SLA only where the experiment says so; a killed server is down until restarted).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in table_rows(result)),
    ]
    for r in result.results:
        if r.failures:
            lines += ["", f"## {r.name}: {r.verdict}", "", f"{r.title}", ""]
            lines += [f"- {failure}" for failure in r.failures]
    if result.acknowledged:
        lines += ["", "## Escalations acknowledged by the suite between experiments", ""]
        lines += [f"- {line}" for line in result.acknowledged]
    return "\n".join(lines) + "\n"


def render_html(result: SuiteResult, off: SuiteResult | None = None) -> str:
    """The same report as a standalone HTML page (``off``: the healing-off pass of a matrix run)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = []
    for r, row in zip(result.results, table_rows(result), strict=True):
        colour = {"met": "#e6f4ea", "missed": "#fce8e6", "skipped": "#f1f3f4"}[r.verdict]
        cells = "".join(f"<td>{esc(cell)}</td>" for cell in row)
        body.append(f'<tr style="background:{colour}" title="{esc(r.title)}">{cells}</tr>')
    details = []
    for r in result.results:
        if r.failures:
            items = "".join(f"<li>{esc(f)}</li>" for f in r.failures)
            details.append(f"<h2>{esc(r.name)}: {esc(r.verdict)}</h2><p>{esc(r.title)}</p><ul>{items}</ul>")
    if result.acknowledged:
        items = "".join(f"<li>{esc(line)}</li>" for line in result.acknowledged)
        details.append(f"<h2>Escalations acknowledged by the suite between experiments</h2><ul>{items}</ul>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Chaos suite {esc(result.run_id)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Chaos suite {esc(result.run_id)}</h1><p>{esc(verdict_line(result))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{''.join(details)}</body></html>\n"
    )


def _row(result: SuiteResult, r: ExperimentResult, journal: Mapping[str, Any]) -> dict[str, Any]:
    def ts(value: str) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return {
        "suite_run": result.run_id,
        "experiment": r.name,
        "title": r.title,
        "started_at": ts(r.started_at),
        "ended_at": ts(r.ended_at),
        "status": r.status,
        "deviated": r.deviated,
        "verdict": r.verdict,
        "mttr_seconds": r.mttr_seconds,
        "mttr_sla_seconds": r.mttr_sla_seconds,
        "availability": r.availability,
        "availability_sla": r.availability_sla,
        "rows_lost": r.rows_lost,
        "rows_lost_sla": r.rows_lost_sla,
        "healing_enabled": result.healing_enabled,
        "failures": json.dumps(r.failures),
        "journal": json.dumps(journal, default=str),
    }


def record_runs(lake: Lake, result: SuiteResult, journals: Mapping[str, Mapping[str, Any]]) -> int:
    """Append one row per experiment to ``chaos_runs`` (exactly once per suite run and experiment)."""
    written = 0
    for r in result.results:
        table = pa.Table.from_pylist([_row(result, r, journals.get(r.name, {}))], schema=SCHEMA)
        written += lake.append_once(CHAOS_RUNS, table, key=f"chaos:{result.run_id}:{r.name}").rows
    return written
