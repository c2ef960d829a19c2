"""`selfheal monitor --interval` against a lake whose object store does not answer (nothing listens on its port)."""

from __future__ import annotations

import pytest

from flows.cli import main


@pytest.mark.integration
def test_a_monitor_loop_reports_each_pass_the_lake_fails_and_keeps_going(
    capsys: pytest.CaptureFixture[str], dead_lake: str
) -> None:
    assert main(["monitor", "--interval", "0.1", "--max-runs", "2", "--no-serving"]) == 1
    err = capsys.readouterr().err
    reports = [line for line in err.splitlines() if line.startswith(f"selfheal monitor: lake {dead_lake}")]
    assert len(reports) == 2, err  # both passes ran, each failure reported
    assert all("failed on the object store" in r and r.endswith("next pass in 0.1 s") for r in reports)
    assert main(["monitor", "--once", "--no-serving"]) == 1
    assert "failed on the object store" in capsys.readouterr().err
