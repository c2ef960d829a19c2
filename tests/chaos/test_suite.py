"""The suite's bookkeeping: reading journals into the SLA table, reports, the chaos_runs table, the order."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chaoslib.loader import load_experiment

from chaos.workload import Outcome
from checkpoints import Lake
from flows.chaos_suite import flow as suite
from flows.chaos_suite import report
from flows.chaos_suite.journal import ExperimentResult, SuiteResult, p99, summarize, traffic_series
from flows.chaos_suite.matrix import ExperimentSpec, MatrixResult, experiment_spec

SLAS = {"mttr_seconds": 60.0, "availability": 0.99, "rows_lost": 0}


def _probe(func: str, output: Any, ok: bool = True, failed: str | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "activity": {"name": f"probe {func}", "type": "probe", "provider": {"func": func}, "tolerance": "${x}"},
        "output": output,
        "status": "failed" if failed else "succeeded",
        "tolerance_met": ok and not failed,
        "start": "2026-01-01T00:00:10+00:00",
        "end": "2026-01-01T00:00:20+00:00",
    }
    if failed:
        run["exception"] = ["Traceback", f"chaoslib.exceptions.ActivityFailed: {failed}\n"]
    return run


def _journal(after: list[dict[str, Any]], status: str = "completed", deviated: bool = False) -> dict[str, Any]:
    hypothesis = {"probes": [{"provider": {"func": p["activity"]["provider"]["func"]}} for p in after]}
    return {
        "experiment": {"title": "A fault", "steady-state-hypothesis": hypothesis},
        "status": status,
        "deviated": deviated,
        "start": "2026-01-01T00:00:00+00:00",
        "end": "2026-01-01T00:01:00+00:00",
        "duration": 60.0,
        "steady_states": {"before": {"steady_state_met": True, "probes": []}, "after": {"probes": after}},
        "run": [
            {
                "activity": {"name": "kill", "type": "action", "provider": {"func": "kill_worker"}},
                "status": "succeeded",
                "start": "2026-01-01T00:00:05+00:00",
                "end": "2026-01-01T00:00:06+00:00",
            }
        ],
        "rollbacks": [],
    }


def test_met_mttr_is_the_longest_recovery() -> None:
    journal = _journal(
        [
            _probe("seconds_until_serving_answers", 2.5),
            _probe("seconds_until_incident_resolved", 23.4),
            _probe("availability", 0.995),
            _probe("rows_lost", 0),
        ]
    )
    row = summarize("serving-kill-server", journal, SLAS, {"availability": 0.5, "rows_lost": 7})
    assert row.verdict == "met" and row.failures == []
    assert row.mttr_seconds == 23.4 and row.mttr_sla_seconds == 60
    assert row.availability == 0.995 and row.rows_lost == 0  # the probes win over the measurements
    assert row.availability_sla == 0.99 and row.rows_lost_sla == 0  # both are held by this hypothesis


def test_missed_names_the_probe_and_why() -> None:
    journal = _journal(
        [
            _probe("seconds_until_serving_answers", 1.0),
            _probe("seconds_until_incident_resolved", None, failed="bad_deploy incident RESOLVED: not met within 60s"),
        ],
        status="failed",
        deviated=True,
    )
    row = summarize("registry-bad-model", journal, SLAS, {"availability": 0.97, "rows_lost": 0})
    assert row.verdict == "missed" and row.mttr_seconds is None
    assert row.failures == ["probe seconds_until_incident_resolved: bad_deploy incident RESOLVED: not met within 60s"]
    assert row.availability == 0.97 and row.rows_lost == 0  # measured outside the journal
    assert row.availability_sla is None and row.rows_lost_sla is None  # ...but not held to the SLA


def test_a_value_outside_its_tolerance_is_a_miss() -> None:
    journal = _journal(
        [_probe("seconds_until_serving_answers", 3.0), _probe("availability", 0.9, ok=False)], deviated=True
    )
    row = summarize("serving-kill-worker", journal, SLAS)
    assert row.verdict == "missed" and row.mttr_seconds == 3.0
    assert row.failures == ["probe availability: 0.9 is outside '${x}'"]


def test_a_fault_that_could_not_be_injected_is_a_miss() -> None:
    journal = _journal([_probe("seconds_until_serving_answers", 0.1)])
    journal["run"][0].update(status="failed", exception=["chaoslib.exceptions.ActivityFailed: no worker answered\n"])
    row = summarize("serving-kill-worker", journal, SLAS)
    assert row.verdict == "missed" and row.failures == ["method: kill: no worker answered"]


def test_a_broken_steady_state_before_the_fault_is_a_miss() -> None:
    journal = _journal([], status="failed")
    journal["steady_states"] = {
        "before": {"steady_state_met": False, "probes": [_probe("seconds_until_serving_answers", None, failed="down")]},
        "after": None,
    }
    row = summarize("x", journal, SLAS)
    assert row.verdict == "missed"
    assert row.failures == ["before the fault: probe seconds_until_serving_answers: down"]


def _result() -> SuiteResult:
    met = summarize(
        "serving-kill-worker",
        _journal([_probe("seconds_until_workers", 0.4)]),
        SLAS,
        {"availability": 1.0, "rows_lost": 0},
    )
    missed = summarize(
        "serving-kill-server",
        _journal([_probe("seconds_until_serving_answers", None, failed="not met within 60s")], status="failed"),
        SLAS,
    )
    skipped = suite._skipped("network-cut-serving", "Cut", "needs root", SLAS, "absorbed")
    return SuiteResult("run-1", healing_enabled=False, results=[met, missed, skipped])


def test_reports_name_what_missed() -> None:
    result = _result()
    assert result.missed == ["serving-kill-server"] and not result.passed
    table = report.render_table(result)
    header = ["fault", "class", "MTTR", "(s)", "SLA", "availability", "p99", "(ms)", "rows", "lost", "verdict"]
    assert table.splitlines()[0].split() == header
    assert re.search(r"serving-kill-worker +— +0\.4 ", table) and "MISSED" in table and "skipped" in table
    assert "MTTR <= 60 s  " in table
    markdown = report.render_markdown(result)
    assert "1 of 2 experiments missed their SLA (healing off): serving-kill-server." in markdown
    assert "- probe seconds_until_serving_answers: not met within 60s" in markdown
    page = report.render_html(result)
    assert page.startswith("<!doctype html>") and "serving-kill-server: missed" in page
    assert json.loads(json.dumps(result.to_dict()))["missed"] == ["serving-kill-server"]


def test_chaos_runs_are_recorded_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    result = _result()
    journals = {"serving-kill-worker": {"status": "completed"}}
    assert report.record_runs(lake, result, journals) == 3
    assert report.record_runs(lake, result, journals) == 0  # the same suite run again: nothing doubles
    rows = lake.read(report.CHAOS_RUNS).to_pylist()
    assert sorted(r["verdict"] for r in rows) == ["met", "missed", "skipped"]
    kept = next(r for r in rows if r["experiment"] == "serving-kill-worker")
    assert json.loads(kept["journal"]) == {"status": "completed"} and kept["healing_enabled"] is False


def test_experiment_order_and_names() -> None:
    names = [p.stem for p in suite.experiment_paths()]
    assert names[:4] == ["serving-kill-worker", "serving-kill-replica", "serving-hang-worker", "serving-kill-server"]
    assert names[-2:] == ["data-drift-concept", "data-drift-covariate"]  # covariate last: see ORDER
    # A release adds a version but leaves the champion: after the bad model, before drift retrains.
    assert names.index("registry-bad-model") < names.index("release-canary-worse") < names.index("data-drift-concept")
    assert sorted(names) == sorted(p.stem for p in suite.EXPERIMENTS.glob("*.yaml"))
    assert [p.stem for p in suite.experiment_paths(["data-drift-concept", "serving-kill-worker"])] == [
        "serving-kill-worker",
        "data-drift-concept",
    ]
    with pytest.raises(ValueError, match="no such experiment: nope"):
        suite.experiment_paths(["nope"])


def test_network_experiments_are_skipped_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert "needs root" in (suite.skip_reason({"tags": ["network", "needs-root"]}) or "")
    assert suite.skip_reason({"tags": ["serving"]}) is None


def test_the_sla_of_an_experiment(tmp_path: Path) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text("slas: {availability: 0.995, mttr_seconds: {default: 90, serving_down: 30}}\n")
    from chaoslib.loader import load_experiment

    experiment = load_experiment(str(suite.EXPERIMENTS / "serving-kill-server.yaml"))
    assert suite.service_levels(experiment, str(config)) == {
        "mttr_seconds": 30.0,
        "availability": 0.995,
        "rows_lost": 0,
    }


def _row(name: str, proves: str, verdict: str, tested: bool = True) -> ExperimentResult:
    journal = _journal([_probe("seconds_until_workers", 1.0)]) if verdict == "met" else _journal([], status="failed")
    return replace(summarize(name, journal, SLAS, proves=proves), verdict=verdict, tested=tested)


def test_the_matrix_holds_each_class_to_its_verdicts() -> None:
    on = SuiteResult("on", True, [_row("a", "healed", "met"), _row("b", "absorbed", "met"), _row("c", "healed", "met")])
    off = SuiteResult(
        "off", False, [_row("a", "healed", "missed"), _row("b", "absorbed", "met"), _row("c", "healed", "met")]
    )
    matrix = MatrixResult(on, off)
    # c met its SLA without the healer: the suite does not prove what it claims.
    assert matrix.problems == ["c (healed): met its SLA with healing off: it does not prove the healer acts"]
    table = report.render_matrix_table(matrix)
    assert [line.split()[-1] for line in table.splitlines()[2:]] == ["yes", "yes", "NO"]
    off.results[2] = _row("c", "healed", "missed")
    off.results[1] = _row("b", "absorbed", "missed")
    assert MatrixResult(on, off).problems == [
        "b (absorbed): missed its SLA with healing off: the design did not ride it out"
    ]
    off.results[1] = _row("b", "absorbed", "met")
    assert report.matrix_verdict_line(MatrixResult(on, off)).startswith(
        "All 3 experiments as their class says: 2 healed"
    )


def test_every_experiment_declares_what_it_proves() -> None:
    specs = {p.stem: experiment_spec(load_experiment(str(p))) for p in suite.experiment_paths()}
    assert all(spec.why for spec in specs.values())
    assert specs["serving-kill-server"].proves == "healed" and specs["serving-kill-worker"].proves == "absorbed"
    with pytest.raises(ValueError, match="no `selfheal` extension"):
        experiment_spec({"title": "t"})
    with pytest.raises(ValueError, match="only fits an absorbed"):
        experiment_spec({"title": "t", "extensions": [{"name": "selfheal", "proves": "healed", "fault_seconds": 5}]})


def test_healing_off_shortens_only_what_must_miss() -> None:
    experiment = {"configuration": {"mttr_seconds": {"provider": {"arguments": {"names": ["x", "serving_down"]}}}}}
    healed, absorbed = ExperimentSpec("healed", "w"), ExperimentSpec("absorbed", "w")
    env = suite.healing_off_overrides(experiment, healed, 15.0)
    assert json.loads(env["SELFHEAL_SLAS__MTTR_SECONDS"]) == {"x": 15.0, "serving_down": 15.0, "default": 15.0}
    assert suite.healing_off_overrides(experiment, absorbed, 15.0) == {}


def test_the_healing_off_pass_waits_three_times_the_healers_own_mttr_within_its_floor_and_cap() -> None:
    rows = [
        replace(_row(name, "healed", "met"), mttr_seconds=mttr) for name, mttr in (("a", 2.0), ("b", 6.0), ("c", 40.0))
    ]
    on = SuiteResult("on", True, [*rows, _row("d", "healed", "missed")])
    assert suite.healing_off_bounds(on, cap=30.0) == {"a": 10.0, "b": 18.0, "c": 30.0}  # d: the cap (not listed)


def test_the_timeline_counts_the_outage_second_by_second() -> None:
    outcomes = [
        Outcome(100.2, True, "200", ms=4.0),
        Outcome(101.5, False, "refused"),
        Outcome(101.7, True, "200", ms=9.0),
    ]
    series = traffic_series(outcomes, 100.0, 103.0)
    assert series == [(0.0, 1.0, 4.0), (1.0, 0.5, 9.0), (2.0, None, None), (3.0, None, None)]
    assert p99([float(v) for v in range(1, 101)]) == 99.0


def test_with_healing_off_the_suite_takes_over_what_an_experiment_left_open(tmp_path: Path) -> None:
    from checkpoints.incidents import IncidentLog, State

    lake = Lake(tmp_path / "lake")
    log = IncidentLog(lake)
    log.open("data_drift", {"features": ["amount"]})
    closed = log.advance(log.open("serving_down", {}), State.RESOLVED, detail="restarted")
    assert closed is not None
    taken = suite._close_leftovers(str(lake.root), "data-drift-covariate", suite.logger)
    assert len(taken) == 1 and "data_drift" in taken[0]
    assert log.open_incidents() == []
    assert suite._acknowledge_escalations(str(lake.root), "data-drift-covariate", suite.logger)


def test_the_sandboxs_remedy_decisions_are_copied_into_the_project_log_once(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from checkpoints.decisions import Decision, DecisionLog

    sandbox, project = Lake(str(tmp_path / "sandbox")), Lake(str(tmp_path / "project"))
    now = datetime.now(UTC)
    chosen = [
        Decision(
            f"inc-{n}:2", "remedy", "data_drift", now, "learned", "retrain", f"inc-{n}", explored=True, propensity=0.15
        )
        for n in range(3)
    ]
    for d in chosen:
        DecisionLog(sandbox).append(d)
    DecisionLog(sandbox).pin("data_drift", "retrain", by="suite")  # a person's say in the sandbox stays there
    assert suite.harvest_decisions(str(tmp_path / "sandbox"), project) == 3
    assert suite.harvest_decisions(str(tmp_path / "sandbox"), project) == 0  # a second copy adds nothing
    assert DecisionLog(project).decisions() == chosen
    assert suite.harvest_decisions(str(tmp_path / "nowhere"), project) == 0


def test_only_the_sandboxs_processes_may_explore(tmp_path: Path) -> None:
    from chaos.sandbox import Sandbox
    from flows.healer.policy import SANDBOX_ENV

    assert Sandbox(tmp_path / "box")._env()[SANDBOX_ENV] == str(tmp_path / "box")


def test_the_table_shows_the_part_of_the_mttr_a_repair_waited_for_approval() -> None:
    journal = _journal([_probe("seconds_until_incident_resolved", 21.5)])
    plain = summarize("registry-bad-model", journal, SLAS, proves="healed")
    journal["run"].append(
        {
            "activity": {"name": "approve", "type": "action", "provider": {"func": "approve_when_proposed"}},
            "status": "succeeded",
            "output": {"incident": "inc-1", "approved": "rollback", "awaited_approval_seconds": 5.24},
        }
    )
    held = summarize("approval-held-rollback", journal, SLAS, proves="healed")
    assert (plain.awaited_approval_seconds, held.awaited_approval_seconds) == (None, 5.24)
    rows = report.table_rows(SuiteResult("on", True, [plain, held]))
    assert [row[2] for row in rows] == ["21.5", "21.5 (incl. 5.2 awaiting approval)"]
