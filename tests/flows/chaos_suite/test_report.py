"""The HTML report's charts: built from synthetic results, then drawn by a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flows.chaos_suite import charts
from flows.chaos_suite.journal import ExperimentResult, SuiteResult, Timeline
from flows.chaos_suite.report import render_html

FAULT_AT = 1_780_000_000.0


def _experiment(
    name: str, proves: str, verdict: str, mttr: float | None, timeline: Timeline | None
) -> ExperimentResult:
    return ExperimentResult(
        name=name,
        title=f"{name} <fault> & recovery",
        verdict=verdict,
        status="completed" if verdict == "met" else "failed",
        deviated=False,
        mttr_seconds=mttr,
        mttr_sla_seconds=30.0,
        availability=0.8 if proves == "healed" else 0.99,
        availability_sla=0.95 if proves == "absorbed" else None,
        rows_lost=0,
        rows_lost_sla=0,
        proves=proves,
        p99_ms=250.0,
        timeline=timeline,
    )


def _outage(down_from: int, up_at: int | None, seconds: int = 40) -> list[tuple[float, float | None, float | None]]:
    """A server down from ``down_from`` (no answer at all for two seconds, then refused) until ``up_at``."""
    series: list[tuple[float, float | None, float | None]] = []
    for t in range(seconds):
        if t < down_from or (up_at is not None and t >= up_at):
            series.append((float(t), 1.0, 300.0 if t == up_at else 20.0 + t % 3))
        elif t < down_from + 2:
            series.append((float(t), None, None))  # requests in flight, none came back this second
        else:
            series.append((float(t), 0.0, None))
    return series


KILL_EVENTS = [
    (0.0, "fault injected"),
    (3.1, "incident opened: serving_down"),
    (3.4, "remedy restart_serving"),
    (9.8, "verified"),
    (10.2, "incident resolved"),
]


def _suites() -> tuple[SuiteResult, SuiteResult]:
    """A healing-on and a healing-off pass of four experiments: an outage, a blip, no traffic, skipped."""
    blip = [(float(t), 0.9 if t == 1 else 1.0, 45.0 if t == 1 else 18.0) for t in range(20)]
    on = [
        _experiment(
            "serving-kill-server", "healed", "met", 10.2, Timeline(FAULT_AT, FAULT_AT + 40, _outage(2, 10), KILL_EVENTS)
        ),
        _experiment(
            "serving-kill-worker", "absorbed", "met", 1.5, Timeline(FAULT_AT, FAULT_AT + 20, blip, KILL_EVENTS[:1])
        ),
        _experiment(
            "pipeline-kill",
            "healed",
            "met",
            12.0,
            Timeline(FAULT_AT, FAULT_AT + 15, [], [(0.0, "fault injected"), (12.0, "verified")]),
        ),
        _experiment("network-cut-serving", "absorbed", "skipped", None, None),
    ]
    off = [
        _experiment(
            "serving-kill-server",
            "healed",
            "missed",
            None,
            Timeline(FAULT_AT, FAULT_AT + 40, _outage(2, None), KILL_EVENTS[:1]),
        ),
        _experiment(
            "serving-kill-worker", "absorbed", "met", 1.6, Timeline(FAULT_AT, FAULT_AT + 20, blip, KILL_EVENTS[:1])
        ),
        _experiment(
            "pipeline-kill", "healed", "met", 14.0, None
        ),  # a healed experiment met with healing off: a suite failure
        _experiment("network-cut-serving", "absorbed", "skipped", None, None),
    ]
    return SuiteResult("run-7", healing_enabled=True, results=on), SuiteResult(
        "run-8", healing_enabled=False, results=off
    )


# Appended to a copy of the report (the report itself has no script): what Chromium laid out.
PROBE = """<script>
const box = (el) => { const b = el.getBBox(); return [b.width, b.height]; };
const points = (svg, css) => [...svg.querySelectorAll('polyline.' + css)]
  .reduce((n, p) => n + p.points.numberOfItems, 0);
const out = {timelines: {}, bars: []};
for (const svg of document.querySelectorAll('svg.timeline')) {
  out.timelines[svg.id] = {
    svg: svg instanceof SVGSVGElement, shown: svg.getBoundingClientRect().height,
    title: svg.querySelector(':scope > title').textContent,
    availability: points(svg, 'availability'), p99: points(svg, 'p99'),
    lines: [...svg.querySelectorAll('polyline.series')].map((p) => box(p)[0]),
    events: [...svg.querySelectorAll('line.event-marker')].map((l) => box(l)[1]),
    labels: [...svg.querySelectorAll('text.event-label')].map((t) => t.firstChild.nodeValue),
    axes: [...svg.querySelectorAll('text.axis-label')].map((t) => t.textContent),
    no_traffic: [...svg.querySelectorAll('text.no-traffic')].map((t) => box(t)[0]),
  };
}
for (const row of document.querySelectorAll('svg.mttr g.bar-row')) {
  const bar = row.querySelector('rect.bar'), sla = row.querySelector('line.sla');
  out.bars.push({experiment: row.dataset.experiment, pass: row.dataset.pass,
    bar: bar ? box(bar)[0] : null, sla: sla ? box(sla)[1] : null,
    text: [...row.querySelectorAll('text')].map((t) => t.textContent).join(' ')});
}
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not on PATH (make deps installs it: deployments/install-test-deps.sh)")
    return found


def _headless(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = _chromium()
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    # timeout: a guard against a hung browser, not a measurement
    return subprocess.run([*command, *args, page.as_uri()], capture_output=True, text=True, timeout=180, check=True)


def _drawn(tmp_path: Path, page: str) -> dict[str, Any]:
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _headless(tmp_path, probed, "--dump-dom").stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    result: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return result


@pytest.mark.integration
def test_chromium_draws_a_timeline_per_experiment_and_the_mttr_chart(tmp_path: Path) -> None:
    on, off = _suites()
    page = render_html(on, off)
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and len(page) < 100_000
    drawn = _drawn(tmp_path, page)
    timelines = drawn["timelines"]
    # serving-kill-server with healing on: 40 s, availability missing for 2 s, p99 for the 8 s it was down
    kill_on = timelines["timeline-0-0"]
    assert kill_on["svg"] and kill_on["shown"] > 0
    assert kill_on["title"].startswith("serving-kill-server, healing on")
    assert (kill_on["availability"], kill_on["p99"]) == (38, 32)
    assert len(kill_on["lines"]) == 4 and all(width > 0 for width in kill_on["lines"])
    assert kill_on["labels"] == [label for _, label in KILL_EVENTS]
    assert len(kill_on["events"]) == 5 and all(height > 0 for height in kill_on["events"])
    assert kill_on["axes"] == ["availability (%)", "p99 latency (ms)", "seconds since the fault was injected (s)"]
    kill_off = timelines["timeline-0-1"]  # never came back: availability 0 to the end, no latency after the fault
    assert (kill_off["availability"], kill_off["p99"], kill_off["labels"]) == (38, 2, ["fault injected"])
    assert (timelines["timeline-1-0"]["availability"], timelines["timeline-1-1"]["p99"]) == (20, 20)
    empty = timelines["timeline-2-0"]
    assert (empty["availability"], empty["p99"], len(empty["events"])) == (0, 0, 2)
    assert len(empty["no_traffic"]) == 2 and all(width > 0 for width in empty["no_traffic"])
    # no timeline: pipeline-kill off, network-cut-serving both ways
    assert set(timelines) == {"timeline-0-0", "timeline-0-1", "timeline-1-0", "timeline-1-1", "timeline-2-0"}
    bars = {(b["experiment"], b["pass"]): b for b in drawn["bars"]}
    names = [r.name for r in on.results]
    assert [b["experiment"] for b in drawn["bars"]] == [n for n in names for _ in range(2)]
    assert bars["serving-kill-server", "healing off"]["bar"] is None
    assert "missed" in bars["serving-kill-server", "healing off"]["text"]
    assert bars["pipeline-kill", "healing off"]["bar"] > bars["pipeline-kill", "healing on"]["bar"] > 0
    assert bars["network-cut-serving", "healing on"]["text"].startswith("skipped")
    assert all(b["sla"] > 0 for b in drawn["bars"])


def _near(pixel: tuple[int, ...], colour: str, slack: int = 12) -> bool:
    want = bytes.fromhex(colour[1:])
    return all(abs(a - b) <= slack for a, b in zip(pixel[:3], want, strict=True))


@pytest.mark.integration
def test_the_screenshot_shows_the_series_and_the_bars(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed: the pixel check needs it")
    on, off = _suites()
    report = tmp_path / "report.html"
    report.write_text(render_html(on, off), encoding="utf-8")
    shot = tmp_path / "report.png"
    _headless(tmp_path, report, "--hide-scrollbars", "--window-size=900,1400", f"--screenshot={shot}")
    with image.open(shot) as png:
        counts = png.convert("RGB").getcolors(maxcolors=1 << 24)
    for colour in (charts.AVAILABILITY_COLOUR, charts.P99_COLOUR, charts.MET_COLOUR, charts.OFF_MET_COLOUR):
        assert sum(n for n, pixel in counts if _near(pixel, colour)) > 400, colour  # legends alone: < 100


def test_a_report_without_a_timeline_or_without_traffic_still_renders() -> None:
    silent = Timeline(FAULT_AT, FAULT_AT + 15, [], [(0.0, "fault injected")])
    result = SuiteResult(
        "run-9",
        healing_enabled=True,
        results=[
            _experiment("pipeline-kill", "healed", "met", 12.0, silent),
            _experiment("data-corrupt", "healed", "missed", None, None),
        ],
    )
    page = render_html(result)
    assert page.count(charts.NO_TRAFFIC) == 2  # both panels of pipeline-kill say so
    assert "<polyline" not in page and page.count('class="event-marker"') == 1
    assert "No timeline: no timeline recorded." in page
    assert page.count('class="bar-row"') == 2 and page.count('<rect class="bar"') == 1
    assert ">missed</text>" in page and "verdict, healing off" not in page
    assert "data-corrupt &lt;fault&gt; &amp; recovery" in page and "<fault>" not in page


def test_healing_off_column_says_when_a_class_is_not_what_it_claims() -> None:
    on, off = _suites()
    table = render_html(on, off).split("</table>")[0]
    cells = dict(re.findall(r'<a href="#x-([\w-]+)">.*?<td style="background:(#\w+)" title="', table))
    assert cells == {"serving-kill-server": "#e6f4ea", "serving-kill-worker": "#e6f4ea", "pipeline-kill": "#fce8e6"}


@pytest.mark.parametrize(
    ("rows", "unreadable", "cell"),
    [
        (0, 0, "0"),
        (1000, 0, "0 (escalated, 1000 rows awaiting a person)"),
        (0, 1, "0 (escalated, 1 unreadable file awaiting a person)"),
        (300, 2, "0 (escalated, 300 rows and 2 unreadable files awaiting a person)"),
    ],
)
def test_rows_awaiting_a_person_are_counted_and_unreadable_files_are_not_given_a_row_count(
    rows: int, unreadable: int, cell: str
) -> None:
    from dataclasses import replace

    from flows.chaos_suite.report import table_rows

    result = replace(_experiment("data-corrupt-truncate", "healed", "met", 9.0, None), rows_awaiting=rows)
    result = replace(result, unreadable_awaiting=unreadable)
    (row,) = table_rows(SuiteResult("run", True, [result]))
    assert cell in row
