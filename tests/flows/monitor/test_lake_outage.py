"""`selfheal monitor --interval` against a lake whose object store does not answer (nothing listens on its port)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.mark.integration
def test_a_monitor_loop_reports_each_pass_the_lake_fails_and_keeps_going(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unreachable_s3_options: dict[str, str],
) -> None:
    pytest.importorskip("s3fs", reason="s3fs lists an s3:// lake: pip install s3fs (in the dev extras)")
    from flows.cli import main

    config = tmp_path / "selfheal.yaml"
    lake = {"root": "s3://lake/monitor", "storage_options": unreachable_s3_options}
    config.write_text(yaml.safe_dump({"lake": lake}))
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    monkeypatch.setenv("SELFHEAL_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    assert main(["monitor", "--interval", "0.1", "--max-runs", "2", "--no-serving"]) == 1
    err = capsys.readouterr().err
    reports = [line for line in err.splitlines() if line.startswith("selfheal monitor: lake s3://lake/monitor")]
    assert len(reports) == 2, err  # both passes ran, each failure reported
    assert all("failed on the object store" in r and r.endswith("next pass in 0.1 s") for r in reports)
    assert main(["monitor", "--once", "--no-serving"]) == 1
    assert "failed on the object store" in capsys.readouterr().err
