"""`selfheal monitor --interval` against a lake whose object store does not answer (nothing listens on its port)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.processes import free_port


@pytest.mark.integration
def test_a_monitor_loop_reports_each_pass_the_lake_fails_and_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("s3fs", reason="s3fs lists an s3:// lake: pip install s3fs (in the dev extras)")
    from flows.cli import main

    endpoint = f"http://127.0.0.1:{free_port()}"  # an object store that is down: the connection is refused
    options = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    config = tmp_path / "selfheal.yaml"
    config.write_text(yaml.safe_dump({"lake": {"root": "s3://lake/monitor", "storage_options": options}}))
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    monkeypatch.setenv("SELFHEAL_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # each pass fails in 0.1 s, not after ~11 s of botocore's retries

    assert main(["monitor", "--interval", "0.1", "--max-runs", "2", "--no-serving"]) == 1
    err = capsys.readouterr().err
    reports = [line for line in err.splitlines() if line.startswith("selfheal monitor: lake s3://lake/monitor")]
    assert len(reports) == 2, err  # both passes ran, each failure reported
    assert all("failed on the object store" in r and r.endswith("next pass in 0.1 s") for r in reports)
    assert main(["monitor", "--once", "--no-serving"]) == 1
    assert "failed on the object store" in capsys.readouterr().err
