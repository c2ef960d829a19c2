"""The suite's reports: the SLA table (text, markdown, HTML with charts) and the ``chaos_runs`` Delta table.

Example:
    >>> print(render_table(result))
    >>> Path("chaos.html").write_text(render_html(on, off))  # off: the healing-off pass, optional
    >>> record_runs(Lake(cfg.lake.root), result, journals)
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from chaos._landing import awaiting
from checkpoints import Lake
from flows.chaos_suite.charts import mttr_svg, timeline_svg
from flows.chaos_suite.journal import ExperimentResult, SuiteResult
from flows.chaos_suite.matrix import CLASSES, MatrixResult, as_expected, expected_verdict

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
    if not (r.rows_awaiting or r.unreadable_awaiting):
        return text
    return f"{text} (escalated, {awaiting(r.rows_awaiting, r.unreadable_awaiting)})"


def _sla_text(r: ExperimentResult) -> str:
    parts = [f"MTTR <= {r.mttr_sla_seconds:g} s"]
    if r.availability_sla is not None:
        parts.append(f"availability >= {r.availability_sla:g}")
    if r.rows_lost_sla is not None:
        parts.append(f"rows lost <= {r.rows_lost_sla}")
    return ", ".join(parts)


def mttr_text(r: ExperimentResult) -> str:
    """The MTTR cell: with the part of it a repair waited for a person's approval."""
    text = _fmt(r.mttr_seconds, ".1f")
    if r.awaited_approval_seconds is not None and r.mttr_seconds is not None:
        text += f" (incl. {r.awaited_approval_seconds:.1f} awaiting approval)"
    return text


def table_rows(result: SuiteResult) -> list[list[str]]:
    """One row of cells per experiment, in ``COLUMNS`` order."""
    return [
        [
            r.name,
            r.proves or "—",
            mttr_text(r),
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
                mttr_text(r),
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


def markdown_table(columns: Sequence[str], rows: list[list[str]]) -> list[str]:
    """A table as markdown lines."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


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


def _head(title: str, verdict: str) -> list[str]:
    return [f"# {title}", "", verdict, ""]


def render_matrix_markdown(matrix: MatrixResult) -> str:
    """The matrix report: both columns, then each pass's failures and unexpected incidents."""
    title = f"Chaos matrix {matrix.on.run_id} (healing on) / {matrix.off.run_id} (healing off)"
    lines = [
        *_head(title, matrix_verdict_line(matrix)),
        "`healed`: the healer must act (met with healing on, missed with healing off). `absorbed`: the design",
        "rides it out (met both ways). Availability and p99: every client request from the fault's injection",
        "to the verdict, outage included (healing on).",
        "",
        *markdown_table(MATRIX_COLUMNS, matrix_rows(matrix)),
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
        *_head(f"Chaos suite {result.run_id}", verdict_line(result)),
        "MTTR counts from the fault's injection to the moment every recovery condition held.",
        "Availability and p99: the sandbox clients' predictions from the fault to the verdict, outage included",
        "(held to the SLA only where the experiment says so; a killed server is down until restarted).",
        "",
        *markdown_table(COLUMNS, table_rows(result)),
    ]
    for r in result.results:
        if r.failures:
            lines += ["", f"## {r.name}: {r.verdict}", "", f"{r.title}", ""]
            lines += [f"- {failure}" for failure in r.failures]
    if result.acknowledged:
        lines += ["", "## Escalations acknowledged by the suite between experiments", ""]
        lines += [f"- {line}" for line in result.acknowledged]
    return "\n".join(lines) + "\n"


_VERDICT_COLOURS = {"met": "#e6f4ea", "missed": "#fce8e6", "skipped": "#f1f3f4"}
_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}svg{display:block;margin:.5em 0}h3{font-size:1em}"
    "section{border-top:1px solid #ccc;margin-top:1.5em}.bad{color:#d93025}.note{color:#5f6368}"
)


def _pass_label(result: SuiteResult) -> str:
    return f"healing {'on' if result.healing_enabled else 'off'}"


def _off_cell(r: ExperimentResult, off: ExperimentResult | None) -> str:
    """The healing-off verdict, green when it is what the experiment's class requires, red when not."""
    if off is None:
        return "<td>—</td>"
    proves = r.proves or off.proves
    must = expected_verdict(proves, healing=False) if proves in CLASSES else None
    verdict = _VERDICT[off.verdict]
    if must is None or off.verdict == "skipped":
        return f"<td>{verdict}</td>"
    ok = off.verdict == must
    why = f"{r.proves or off.proves}: with healing off it must be {must}"
    colour = _VERDICT_COLOURS["met" if ok else "missed"]
    return f'<td style="background:{colour}" title="{html.escape(why)}">{verdict}</td>'


def _html_table(result: SuiteResult, off: SuiteResult | None) -> str:
    esc = html.escape
    columns = [*COLUMNS, f"verdict, {_pass_label(off)}"] if off is not None else list(COLUMNS)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    off_by_name = {r.name: r for r in off.results} if off is not None else {}
    body = []
    for r, row in zip(result.results, table_rows(result), strict=True):
        cells = "".join(f"<td>{esc(cell)}</td>" for cell in row)
        if off is not None:
            cells += _off_cell(r, off_by_name.get(r.name))
        link = f'<a href="#{esc(_anchor(r.name))}">{esc(r.name)}</a>'
        cells = cells.replace(f"<td>{esc(r.name)}</td>", f"<td>{link}</td>", 1)
        body.append(f'<tr style="background:{_VERDICT_COLOURS[r.verdict]}" title="{esc(r.title)}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _anchor(name: str) -> str:
    return "x-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _facts(r: ExperimentResult) -> str:
    """One line of what the experiment measured in one pass."""
    mttr = "—" if r.mttr_seconds is None else f"{r.mttr_seconds:.1f} s"
    parts = [r.verdict, f"MTTR {mttr} (SLA {r.mttr_sla_seconds:g} s)"]
    parts.append(f"availability {_fmt(r.availability, '.4f')}")
    if r.availability_sla is not None:
        parts[-1] += f" (SLA {r.availability_sla:g})"
    parts.append(f"p99 {_fmt(r.p99_ms, '.0f')} ms")
    parts.append(f"rows lost {_fmt(r.rows_lost, 'd')}")
    return ", ".join(parts)


def _timeline_html(r: ExperimentResult, label: str, chart_id: str) -> str:
    esc = html.escape
    out = [f"<h3>{esc(label)}: {esc(_facts(r))}</h3>"]
    if r.unexpected_incidents:
        items = "".join(f"<li>{esc(i)}</li>" for i in r.unexpected_incidents)
        out.append(f'<p class="bad">Incidents of another cause opened during the experiment:</p><ul>{items}</ul>')
    if r.failures:
        out.append("<ul>" + "".join(f"<li>{esc(f)}</li>" for f in r.failures) + "</ul>")
    if r.timeline is None:
        why = "it was skipped" if r.verdict == "skipped" else "no timeline recorded"
        out.append(f'<p class="note no-timeline">No timeline: {esc(why)}.</p>')
    else:
        title = f"{r.name}, {label}: client availability and p99 latency from the fault, with the healer's events"
        out.append(timeline_svg(r.timeline, chart_id=chart_id, title=title, availability_sla=r.availability_sla))
    return "".join(out)


def _section(index: int, passes: list[tuple[str, ExperimentResult | None]]) -> str:
    """One experiment: its class and title, then per pass what it measured and its timeline."""
    esc = html.escape
    first = next(r for _, r in passes if r is not None)
    verdicts = ", ".join(f"{r.verdict} ({label})" for label, r in passes if r is not None)
    heading = f"{first.name}: {first.verdict}" if len(passes) == 1 else f"{first.name}: {verdicts}"
    proves = f"proves: {first.proves}. " if first.proves else ""
    out = [f'<section id="{esc(_anchor(first.name))}"><h2>{esc(heading)}</h2><p>{esc(proves)}{esc(first.title)}</p>']
    for j, (label, r) in enumerate(passes):
        if r is None:
            out.append(f'<p class="note">{esc(label)}: not run.</p>')
        else:
            out.append(_timeline_html(r, label, f"timeline-{index}-{j}"))
    return "".join(out) + "</section>"


def render_html(result: SuiteResult, off: SuiteResult | None = None) -> str:
    """The report as one standalone HTML page: the table, the MTTR chart, a timeline per experiment.

    The charts are inline SVG drawn here (no script, nothing fetched when the page is viewed).

    Args:
        result: the suite's run (with healing on, when ``off`` is given).
        off: the same experiments run with healing off: a second verdict column, and each
            experiment's healing-off timeline under its healing-on one.
    """
    esc = html.escape
    runs = [result, off] if off is not None else [result]
    labels = [_pass_label(run) for run in runs]
    by_name = [{r.name: r for r in run.results} for run in runs]
    names = list(dict.fromkeys(r.name for run in runs for r in run.results))
    sections = [
        _section(i, [(label, lookup.get(name)) for label, lookup in zip(labels, by_name, strict=True)])
        for i, name in enumerate(names)
    ]
    chart = mttr_svg([(label, run.results) for label, run in zip(labels, runs, strict=True)], chart_id="mttr")
    acknowledged = [f"{label}: {line}" for label, run in zip(labels, runs, strict=True) for line in run.acknowledged]
    if acknowledged:
        items = "".join(f"<li>{esc(line)}</li>" for line in acknowledged)
        sections.append(f"<h2>Escalations acknowledged by the suite between experiments</h2><ul>{items}</ul>")
    verdicts = "".join(f"<p>{esc(verdict_line(run))}</p>" for run in runs)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Chaos suite {esc(result.run_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Chaos suite {esc(result.run_id)}</h1>{verdicts}{_html_table(result, off)}"
        f"<h2>MTTR against the SLA</h2>{chart}{''.join(sections)}</body></html>\n"
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
