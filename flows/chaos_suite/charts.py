"""Static SVG charts for the chaos suite's HTML report (no script, nothing fetched when the page is viewed).

Two charts: an experiment's timeline (the clients' availability and p99 latency per
second, in two stacked panels over seconds from the fault, with a vertical marker per
event: fault injected, incident opened, remedy, verified), and the MTTR of every
experiment against its SLA (one horizontal bar per experiment and pass, the SLA a
marker on its row, a missing MTTR written "missed").

Example:
    >>> svg = timeline_svg(result.timeline, chart_id="t-kill-on", title="serving-kill-worker, healing on")
    >>> bars = mttr_svg([("healing on", suite.results)], chart_id="mttr")
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flows.chaos_suite.journal import ExperimentResult, Timeline

AVAILABILITY_COLOUR = "#1a73e8"
P99_COLOUR = "#e8710a"
SLA_COLOUR = "#202124"
MET_COLOUR = "#34a853"
MISSED_COLOUR = "#d93025"
OFF_MET_COLOUR = "#81c995"
OFF_MISSED_COLOUR = "#f28b82"
NO_TRAFFIC = "no client traffic recorded"

_WIDTH = 760
_LEFT, _RIGHT = 64, 24  # room for the y-axis labels on the left
_PANEL_HEIGHT, _PANEL_GAP = 110, 30
_LABELS_TOP, _LABEL_ROW = 24, 14  # event labels in rows under the legend
_CHAR_WIDTH = 6.0  # rough width of one character at 10 px, to keep labels from overlapping
_EVENT_COLOURS = (  # first keyword found in the label decides; the labels come from the suite's logs
    ("escalat", "#9334e6"),
    ("fault", MISSED_COLOUR),
    ("detect", "#f9ab00"),
    ("open", "#f9ab00"),
    ("remed", AVAILABILITY_COLOUR),
    ("verif", MET_COLOUR),
    ("resolv", MET_COLOUR),
)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [round(math.floor(low / step) * step, 10)]
    while ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


@dataclass(frozen=True)
class _Axis:
    """A linear map from data values to pixels."""

    low: float
    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return self.start + (value - self.low) / span * (self.end - self.start)


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The series split where a value is missing (a gap, not a drop to zero)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, value in points:
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, value))
    return [run for run in runs if run]


def _line(points: Sequence[tuple[float, float | None]], x: _Axis, y: _Axis, css: str, colour: str) -> str:
    """One polyline per unbroken run; a run of one point also gets a dot (a polyline of one point draws nothing)."""
    out = []
    for run in _runs(points):
        coords = " ".join(f"{_num(x(t))},{_num(y(v))}" for t, v in run)
        out.append(f'<polyline class="series {css}" points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(run) == 1:
            cx, cy = _num(x(run[0][0])), _num(y(run[0][1]))
            out.append(f'<circle class="{css}-dot" cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
    return "".join(out)


def _event_colour(label: str) -> str:
    lowered = label.lower()
    return next((colour for word, colour in _EVENT_COLOURS if word in lowered), "#5f6368")


def _label_rows(events: Sequence[tuple[float, str]], x: _Axis, max_rows: int = 6) -> list[tuple[int, str]]:
    """A row and text anchor for each event's label, so labels close in time do not overlap."""
    ends: list[float] = []
    placed = []
    for t, label in events:
        width = len(label) * _CHAR_WIDTH
        at = x(t)
        anchor = "end" if at + width > _WIDTH - 4 else "start"
        lo, hi = (at - width - 2, at) if anchor == "end" else (at, at + width + 2)
        row = next((i for i, end in enumerate(ends) if end < lo - 4), None)
        if row is None and len(ends) < max_rows:
            ends.append(hi)
            row = len(ends) - 1
        elif row is None:  # too many close together: share the emptiest row rather than grow the chart
            row = min(range(len(ends)), key=lambda i: ends[i])
        ends[row] = max(ends[row], hi)
        placed.append((row, anchor))
    return placed


def _events(events: Sequence[tuple[float, str]], placed: Sequence[tuple[int, str]], x: _Axis, bottom: float) -> str:
    """A vertical marker per event from its label (in rows from ``_LABELS_TOP``) down to ``bottom``.

    The labels are drawn after every marker, on a white halo, so a marker running down
    through another event's label does not strike it out.
    """
    markers, labels = [], []
    for (t, label), (row, anchor) in zip(events, placed, strict=True):
        colour, at, y = _event_colour(label), _num(x(t)), _LABELS_TOP + row * _LABEL_ROW + 10
        shift, tip = (3 if anchor == "start" else -3), f"<title>{_esc(label)} at {t:.1f} s</title>"
        markers.append(
            f'<line class="event-marker" x1="{at}" x2="{at}" y1="{_num(y - 9)}" y2="{_num(bottom)}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 3">{tip}</line>'
        )
        labels.append(
            f'<text class="event-label" x="{_num(x(t) + shift)}" y="{_num(y)}" text-anchor="{anchor}" font-size="10" '
            f'fill="{colour}" stroke="#fff" stroke-width="3" paint-order="stroke">{_esc(label)}{tip}</text>'
        )
    return f'<g class="events">{"".join(markers)}{"".join(labels)}</g>'


def _y_axis(axis: _Axis, ticks: Sequence[float], label: str, fmt: str, left: float, right: float) -> str:
    mid = _num((axis.start + axis.end) / 2)
    out = [f'<line x1="{left}" x2="{left}" y1="{_num(axis.end)}" y2="{_num(axis.start)}" stroke="#5f6368"/>']
    for tick in ticks:
        y = _num(axis(tick))
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{y}" y2="{y}" stroke="#e8eaed"/>'
            f'<text x="{left - 4}" y="{y}" dy="3" text-anchor="end" font-size="10">{format(tick, fmt)}</text>'
        )
    out.append(
        f'<text class="axis-label" transform="translate(14 {mid}) rotate(-90)" text-anchor="middle" '
        f'font-size="11">{_esc(label)}</text>'
    )
    return "".join(out)


def _x_axis(axis: _Axis, ticks: Sequence[float], y: float, label: str) -> str:
    out = [f'<line x1="{_num(axis.start)}" x2="{_num(axis.end)}" y1="{_num(y)}" y2="{_num(y)}" stroke="#5f6368"/>']
    for tick in ticks:
        if axis.low <= tick <= axis.high:
            x = _num(axis(tick))
            out.append(
                f'<line x1="{x}" x2="{x}" y1="{_num(y)}" y2="{_num(y + 4)}" stroke="#5f6368"/>'
                f'<text x="{x}" y="{_num(y + 15)}" text-anchor="middle" font-size="10">{_num(tick)}</text>'
            )
    out.append(
        f'<text class="axis-label" x="{_num((axis.start + axis.end) / 2)}" y="{_num(y + 30)}" '
        f'text-anchor="middle" font-size="11">{_esc(label)}</text>'
    )
    return "".join(out)


def _legend(items: Sequence[tuple[str, str, bool]], y: float, x: float = _LEFT) -> str:
    """Swatches with their names: (name, colour, dashed)."""
    out = ['<g class="legend">']
    for name, colour, dashed in items:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(
            f'<line x1="{_num(x)}" x2="{_num(x + 18)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{colour}" '
            f'stroke-width="{2 if not dashed else 1.5}"{dash}/>'
            f'<text x="{_num(x + 22)}" y="{_num(y)}" dy="3" font-size="10">{_esc(name)}</text>'
        )
        x += 30 + len(name) * _CHAR_WIDTH
    out.append("</g>")
    return "".join(out)


def _svg(chart_id: str, css: str, title: str, desc: str, height: float, body: str) -> str:
    cid = _esc(chart_id)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" id="{cid}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" width="{_WIDTH}" height="{_num(height)}" '
        f'viewBox="0 0 {_WIDTH} {_num(height)}" font-family="sans-serif">'
        f'<title id="{cid}-title">{_esc(title)}</title><desc id="{cid}-desc">{_esc(desc)}</desc>{body}</svg>'
    )


def _time_span(timeline: Timeline) -> tuple[float, float]:
    times = [t for t, _, _ in timeline.series] + [t for t, _ in timeline.events]
    low = min([0.0, *times])
    high = max([timeline.end_at - timeline.fault_at, *times])
    return low, high if high > low else low + 1.0


def _panel(
    points: Sequence[tuple[float, float | None]], x: _Axis, y: _Axis, ticks: Sequence[float], css: str, fmt: str
) -> str:
    """One panel: its grid and y axis, the series, or a note that there is none."""
    label = {"availability": "availability (%)", "p99": "p99 latency (ms)"}[css]
    colour = {"availability": AVAILABILITY_COLOUR, "p99": P99_COLOUR}[css]
    out = [_y_axis(y, ticks, label, fmt, x.start, x.end)]
    out.append(
        f'<line x1="{_num(x.start)}" x2="{_num(x.end)}" y1="{_num(y.start)}" y2="{_num(y.start)}" stroke="#5f6368"/>'
    )
    if any(v is not None for _, v in points):
        out.append(_line(points, x, y, css, colour))
    else:
        out.append(
            f'<text class="no-traffic" x="{_num((x.start + x.end) / 2)}" y="{_num((y.start + y.end) / 2)}" '
            f'text-anchor="middle" font-size="12" fill="#5f6368">{NO_TRAFFIC}</text>'
        )
    return "".join(out)


def timeline_svg(timeline: Timeline, *, chart_id: str, title: str, availability_sla: float | None = None) -> str:
    """The clients' availability (top) and p99 latency (bottom) per second from the fault, with the events marked.

    Args:
        timeline: what the experiment recorded (``t`` in seconds from the fault).
        chart_id: an id unique in the page (the SVG's ``<title>`` and ``<desc>`` hang off it).
        title: the chart's accessible name, e.g. ``serving-kill-worker, healing on``.
        availability_sla: drawn as a dashed line in the availability panel when given.
    """
    x = _Axis(*_time_span(timeline), _LEFT, _WIDTH - _RIGHT)
    events = sorted(timeline.events)
    placed = _label_rows(events, x)
    rows = 1 + max((row for row, _ in placed), default=-1)
    a_top = _LABELS_TOP + rows * _LABEL_ROW + 8
    b_top = a_top + _PANEL_HEIGHT + _PANEL_GAP
    b_bottom = b_top + _PANEL_HEIGHT
    availability = _Axis(0.0, 1.0, a_top + _PANEL_HEIGHT, a_top)
    p99_values = [p for _, _, p in timeline.series if p is not None]
    p99_ticks = nice_ticks(0.0, max(p99_values, default=100.0) or 100.0, 4)
    p99 = _Axis(0.0, p99_ticks[-1], b_bottom, b_top)
    legend = [("availability per second", AVAILABILITY_COLOUR, False), ("p99 latency per second", P99_COLOUR, False)]
    body = [
        _panel(
            [(t, a) for t, a, _ in timeline.series], x, availability, (0, 0.25, 0.5, 0.75, 1), "availability", ".0%"
        ),
        _panel([(t, p) for t, _, p in timeline.series], x, p99, p99_ticks, "p99", "g"),
        _x_axis(x, nice_ticks(x.low, x.high, 8), b_bottom, "seconds since the fault was injected (s)"),
    ]
    if availability_sla is not None:
        y = _num(availability(availability_sla))
        body.append(
            f'<line class="sla" x1="{_num(x.start)}" x2="{_num(x.end)}" y1="{y}" y2="{y}" stroke="{SLA_COLOUR}" '
            f'stroke-width="1" stroke-dasharray="4 3"><title>availability SLA {availability_sla:g} '
            "(over the whole fault window)</title></line>"
        )
        legend.append((f"availability SLA ({availability_sla:g}, whole window)", SLA_COLOUR, True))
    body.append(_events(events, placed, x, b_bottom))
    body.append(_legend(legend, 12))
    desc = (
        f"Availability and p99 latency of the sandbox's clients per second over {len(timeline.series)} s "
        f"from the fault; events: " + ("; ".join(f"{label} at {t:.1f} s" for t, label in events) or "none")
    )
    return _svg(chart_id, "timeline", title, desc, b_bottom + 40, "".join(body))


_BAR_HEIGHT, _BAR_GAP, _GROUP_GAP = 14, 4, 10
_ROWS_TOP = 30


def _bar_row(r: ExperimentResult | None, name: str, label: str, x: _Axis, y: float, light: bool) -> str:
    """One experiment's bar in one pass: the MTTR as a bar and the SLA as a marker, or why there is no MTTR."""
    if r is None:
        what, body = "not run", ""
    elif r.verdict == "skipped" or r.mttr_seconds is None:
        what = "skipped" if r.verdict == "skipped" else "missed"
        colour = "#5f6368" if what == "skipped" else MISSED_COLOUR
        body = (
            f'<text class="{what}" x="{_num(x.start + 4)}" y="{_num(y + _BAR_HEIGHT - 3)}" font-size="11" '
            f'font-weight="bold" fill="{colour}">{what}</text>'
        )
    else:
        within = r.mttr_seconds <= r.mttr_sla_seconds
        colour = (
            (OFF_MET_COLOUR if within else OFF_MISSED_COLOUR) if light else (MET_COLOUR if within else MISSED_COLOUR)
        )
        end = max(x(r.mttr_seconds), x.start + 1)
        what = f"MTTR {r.mttr_seconds:g} s"
        body = (
            f'<rect class="bar" x="{_num(x.start)}" y="{_num(y)}" width="{_num(end - x.start)}" '
            f'height="{_BAR_HEIGHT}" fill="{colour}"/>'
            f'<text x="{_num(end + 4)}" y="{_num(y + _BAR_HEIGHT - 3)}" font-size="10">{r.mttr_seconds:g} s</text>'
        )
    if r is not None:
        sla = _num(x(r.mttr_sla_seconds))
        body += (
            f'<line class="sla" x1="{sla}" x2="{sla}" y1="{_num(y - 3)}" y2="{_num(y + _BAR_HEIGHT + 3)}" '
            f'stroke="{SLA_COLOUR}" stroke-width="2"/>'
        )
        what += f" (SLA {r.mttr_sla_seconds:g} s), {r.verdict}"
    return (
        f'<g class="bar-row" data-experiment="{_esc(name)}" data-pass="{_esc(label)}">'
        f"<title>{_esc(name)}, {_esc(label)}: {_esc(what)}</title>{body}</g>"
    )


def _names(passes: Sequence[tuple[str, Sequence[ExperimentResult]]]) -> list[str]:
    """Every experiment in any pass, in the order they first ran."""
    return list(dict.fromkeys(r.name for _, results in passes for r in results))


def mttr_svg(
    passes: Sequence[tuple[str, Sequence[ExperimentResult]]],
    *,
    chart_id: str,
    title: str = "MTTR per experiment against its SLA",
) -> str:
    """A horizontal bar per experiment and pass: its MTTR, its SLA a black marker, "missed" where it never recovered.

    Args:
        passes: ``(label, results)`` per pass of the suite, e.g. ``[("healing on", on), ("healing off", off)]``;
            the bars of later passes are drawn lighter under the first pass's.
        chart_id: an id unique in the page.
        title: the chart's accessible name.
    """
    names = _names(passes)
    label_width = 8 + min(max((len(n) for n in names), default=10), 40) * _CHAR_WIDTH
    pass_width = 8 + max(len(label) for label, _ in passes) * _CHAR_WIDTH if len(passes) > 1 else 0
    values = [v for _, rs in passes for r in rs for v in (r.mttr_seconds, r.mttr_sla_seconds) if v is not None]
    ticks = nice_ticks(0.0, max(values, default=1.0) or 1.0, 6)
    x = _Axis(0.0, ticks[-1], label_width + pass_width + 8, _WIDTH - 50)
    group = len(passes) * (_BAR_HEIGHT + _BAR_GAP) + _GROUP_GAP
    bottom = _ROWS_TOP + len(names) * group
    body = [
        f'<line x1="{_num(x(t))}" x2="{_num(x(t))}" y1="{_ROWS_TOP - 4}" y2="{_num(bottom)}" stroke="#e8eaed"/>'
        for t in ticks
    ]
    lookup = [({r.name: r for r in results}, label) for label, results in passes]
    for i, name in enumerate(names):
        top = _ROWS_TOP + i * group
        shown = name if len(name) <= 40 else name[:39] + "…"
        body.append(f'<text x="4" y="{_num(top + _BAR_HEIGHT - 3)}" font-size="11">{_esc(shown)}</text>')
        for j, (by_name, label) in enumerate(lookup):
            y = top + j * (_BAR_HEIGHT + _BAR_GAP)
            if pass_width:
                body.append(
                    f'<text x="{_num(label_width)}" y="{_num(y + _BAR_HEIGHT - 3)}" font-size="10" '
                    f'fill="#5f6368">{_esc(label)}</text>'
                )
            body.append(_bar_row(by_name.get(name), name, label, x, y, light=j > 0))
    body.append(_x_axis(x, ticks, bottom, "MTTR, seconds from the fault's injection to recovery (s)"))
    legend = [
        ("MTTR within SLA", MET_COLOUR, False),
        ("MTTR over SLA", MISSED_COLOUR, False),
        ("SLA", SLA_COLOUR, False),
    ]
    legend += [(f"{label}: lighter", OFF_MET_COLOUR, False) for label, _ in passes[1:]]
    body.append(_legend(legend, 12, x=4))
    desc = f"{len(names)} experiments, {len(passes)} pass(es): " + ", ".join(label for label, _ in passes)
    return _svg(chart_id, "mttr", title, desc, bottom + 40, "".join(body))
