"""What each experiment proves, and the two-way matrix: every experiment with healing on and off.

Every experiment declares its class in a Chaos Toolkit extension::

    extensions:
      - name: selfheal
        proves: healed            # or absorbed
        why: "with healing off nothing restarts the server"
        expected_incidents: [serving_down]
        fault_seconds: 5          # absorbed only: a bounded outage the experiment undoes itself

``healed``: the healer must act, so with healing off the experiment must MISS.
``absorbed``: the design rides the fault out (gunicorn respawn, breaker and fallback,
retries, checkpointed resume), so it MEETS both ways; its availability is measured over
the whole fault window. A ``healed`` experiment that meets its SLA with healing off, or an
``absorbed`` one that misses, is a failure of the suite itself, not of the system.

Example:
    >>> spec = experiment_spec(load_experiment("chaos/experiments/serving-kill-server.yaml"))
    >>> spec.proves, expected_verdict(spec.proves, healing=False)
    ('healed', 'missed')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.chaos_suite.journal import ExperimentResult, SuiteResult

CLASSES = ("healed", "absorbed")
EXTENSION = "selfheal"


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment's ``selfheal`` extension."""

    proves: str
    why: str
    expected_incidents: tuple[str, ...] = ()
    fault_seconds: float | None = None


def experiment_spec(experiment: Mapping[str, Any]) -> ExperimentSpec:
    """Read the ``selfheal`` extension of an experiment.

    Raises:
        ValueError: no such extension, an unknown class, or ``fault_seconds`` on a ``healed`` one.
    """
    title = experiment.get("title", "an experiment")
    found = [e for e in experiment.get("extensions") or [] if isinstance(e, Mapping) and e.get("name") == EXTENSION]
    if not found:
        raise ValueError(f"{title!r}: no `{EXTENSION}` extension saying what it proves ({' or '.join(CLASSES)})")
    ext = found[0]
    proves = str(ext.get("proves", ""))
    if proves not in CLASSES:
        raise ValueError(f"{title!r}: proves must be one of {', '.join(CLASSES)}, got {proves!r}")
    seconds = ext.get("fault_seconds")
    if seconds is not None and proves != "absorbed":
        raise ValueError(f"{title!r}: fault_seconds (a bounded outage) only fits an absorbed experiment")
    return ExperimentSpec(
        proves=proves,
        why=str(ext.get("why", "")),
        expected_incidents=tuple(str(c) for c in ext.get("expected_incidents") or ()),
        fault_seconds=float(seconds) if seconds is not None else None,
    )


def expected_verdict(proves: str, healing: bool) -> str:
    """``met`` with healing on; with healing off ``missed`` for ``healed``, ``met`` for ``absorbed``."""
    return "met" if healing or proves == "absorbed" else "missed"


def as_expected(result: ExperimentResult, healing: bool) -> bool:
    """The verdict is the one the experiment's class calls for (a skipped one is neither)."""
    return result.verdict == expected_verdict(result.proves, healing)


@dataclass
class MatrixResult:
    """The suite run twice: ``on`` (healing on) and ``off`` (healing off)."""

    on: SuiteResult
    off: SuiteResult
    report_markdown: str | None = None
    report_html: str | None = None
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.problems:
            self.problems = matrix_problems(self.on, self.off)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "on": self.on.to_dict(),
            "off": self.off.to_dict(),
            "problems": self.problems,
            "passed": self.passed,
            "report_markdown": self.report_markdown,
            "report_html": self.report_html,
        }


def matrix_problems(on: SuiteResult, off: SuiteResult) -> list[str]:
    """Every experiment whose verdict is not the one its class calls for, one line each."""
    problems = []
    offs = {r.name: r for r in off.results}
    for r in on.results:
        if r.verdict == "skipped":
            continue
        if r.verdict != "met":
            problems.append(f"{r.name} ({r.proves}): missed its SLA with healing on")
        other = offs.get(r.name)
        if other is None or other.verdict == "skipped":
            continue
        if r.proves == "healed" and other.verdict == "missed" and not other.tested:
            problems.append(
                f"{r.name} (healed): with healing off it missed before its recovery was judged (not steady "
                "before the fault, or the fault did not go in): that proves nothing about the healer"
            )
        elif not as_expected(other, healing=False):
            if r.proves == "healed":
                problems.append(f"{r.name} (healed): met its SLA with healing off: it does not prove the healer acts")
            else:
                problems.append(f"{r.name} (absorbed): missed its SLA with healing off: the design did not ride it out")
    return problems
