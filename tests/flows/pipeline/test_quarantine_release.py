"""Quarantined batches released after a config fix, and duplicate rows handled as configured (issue 16).

Real Prefect harness, real Delta lake, real MLflow sqlite store; the commands run
through ``selfheal``'s own entry point. Rows in bronze are counted with deltalake
itself, not through our ``Lake``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable

from checkpoints import Lake
from flows.cli.main import main
from flows.config import load_config
from flows.pipeline.flow import _next_batch_id, land_task, pipeline_flow
from flows.pipeline.stages.ingest import LandingFile
from tests.flows.pipeline.fixtures import dataset_frame, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: Share of a batch's rows that are copies of other rows (the survey dataset of issue 16 had 16%).
COPIES = 0.16


def _survey_batches(landing: Path, parts: int = 2) -> tuple[int, str]:
    """``parts`` batches, each with 16% legitimately identical rows; returns (rows in all, target)."""
    frame, target = dataset_frame("binary")
    landing.mkdir(parents=True, exist_ok=True)
    size, rows = len(frame) // parts, 0
    for i in range(parts):
        chunk = frame.iloc[i * size : (i + 1) * size]
        batch = pd.concat([chunk, chunk.iloc[: round(len(chunk) * COPIES / (1 - COPIES))]], ignore_index=True)
        batch.to_parquet(landing / f"survey-{i:02d}.parquet", index=False)
        rows += len(batch)
    return rows, target


def _config(tmp_path: Path, target: str, **expectations: Any) -> Path:
    """A config with the library's default expectations but ``min_rows`` and ``expectations``."""
    data = {"target": target, "task": "binary", "expectations": {"min_rows": 10, **expectations}}
    return write_config(tmp_path, "binary", target, data=data)


def _bronze_rows(tmp_path: Path) -> int:
    return int(DeltaTable(str(tmp_path / "lake" / "bronze")).to_pyarrow_table().num_rows)


def _selfheal(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fix_the_config_then_release_lands_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, target = _survey_batches(tmp_path / "landing")
    strict = _config(tmp_path, target, duplicates="quarantine", max_duplicate_fraction=0.05)
    assert pipeline_flow(str(strict)).outcome == "nothing-new"
    lake = Lake(tmp_path / "lake")
    quarantined = lake.quarantined()
    assert len(quarantined) == 2 and all("duplicate_fraction<=0.05" in r.reason for r in quarantined)
    assert not lake.has_rows("bronze")

    # Still wrong (a new limit, still too strict): both stay, with the new reason; the old id still works.
    _config(tmp_path, target, duplicates="quarantine", max_duplicate_fraction=0.1)
    code, out, _ = _selfheal(strict, monkeypatch, capsys, "lake", "quarantine", "release", quarantined[0].id)
    assert code == 0 and "still refused" in out and "duplicate_fraction<=0.1 failed" in out
    code, out, _ = _selfheal(strict, monkeypatch, capsys, "lake", "quarantine", "list")
    assert out.count("duplicate_fraction<=0.1 failed") == 1 and out.count("duplicate_fraction<=0.05 failed") == 1
    again = {r.sha256: r for r in lake.quarantined()}
    assert again[quarantined[0].sha256].quarantined_at == quarantined[0].quarantined_at  # not a new refusal

    # Fixed: identical records are legitimate here. A release stopped after landing the first batch
    # (bronze written, release not recorded) is what `land_task` alone leaves.
    fixed = _config(tmp_path, target, duplicates="keep")
    first = quarantined[0]
    crashed = LandingFile(first.source, first.sha256, lake.storage.read_bytes(first.stored_at))
    assert land_task.fn(load_config(fixed), [crashed], _next_batch_id(lake)).accepted
    code, out, _ = _selfheal(fixed, monkeypatch, capsys, "lake", "quarantine", "release", "--all")
    assert code == 0, out
    assert f"{first.id}  {first.source}: already landed" in out
    assert f"{quarantined[1].id}  {quarantined[1].source}: landed" in out
    assert _bronze_rows(tmp_path) == rows  # every row, the identical ones included, once
    # The release is a checkpoint: a later run rolled back to the last manifest keeps the released rows.
    manifest = lake.last_manifest()
    assert manifest is not None and manifest.stages["bronze"] == lake.version("bronze")

    # Released twice, by id and with --all: nothing lands again.
    code, out, _ = _selfheal(fixed, monkeypatch, capsys, "lake", "quarantine", "release", first.id, quarantined[1].id)
    assert code == 0 and out.count("already released") == 2
    code, out, _ = _selfheal(fixed, monkeypatch, capsys, "lake", "quarantine", "release", "--all")
    assert code == 0 and "no quarantined batches to release" in out
    code, out, _ = _selfheal(fixed, monkeypatch, capsys, "lake", "quarantine")
    assert code == 0 and "no quarantined batches" in out
    assert _bronze_rows(tmp_path) == rows

    # The next run trains on the released rows, and its landing takes neither file again.
    result = pipeline_flow(str(fixed))
    assert result.outcome == "promoted", result.message
    assert _bronze_rows(tmp_path) == rows and lake.read("silver").num_rows == rows


def test_an_unknown_id_is_a_clear_error_and_lands_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = _survey_batches(tmp_path / "landing")
    strict = _config(tmp_path, target, duplicates="quarantine")
    pipeline_flow(str(strict))
    lake = Lake(tmp_path / "lake")
    known = lake.quarantined()[0]
    _config(tmp_path, target, duplicates="keep")

    code, out, err = _selfheal(strict, monkeypatch, capsys, "lake", "quarantine", "release", known.id, "deadbeef")
    assert code == 1
    assert err == (
        "selfheal: error: no quarantined batch with id 'deadbeef'; "
        "`selfheal lake quarantine list` shows each batch's id\n"
    )
    assert not lake.has_rows("bronze") and len(lake.quarantined()) == 2  # the known id did not land either
    with pytest.raises(SystemExit) as usage:
        _selfheal(strict, monkeypatch, capsys, "lake", "quarantine", "release")
    assert usage.value.code == 2 and "give the ids of the batches to release, or --all" in capsys.readouterr().err


def test_identical_rows_are_kept_by_default_without_id_columns(tmp_path: Path) -> None:
    rows, target = _survey_batches(tmp_path / "landing")
    config = _config(tmp_path, target)  # max_duplicate_fraction stays at its default, 0.05

    result = pipeline_flow(str(config))

    assert result.outcome == "promoted", result.message  # base: both batches quarantined, nothing-new
    assert _bronze_rows(tmp_path) == rows and not Lake(tmp_path / "lake").quarantined()
    assert result.landing.dropped == {}


def test_dropped_duplicates_are_counted_in_pipeline_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, target = _survey_batches(tmp_path / "landing")
    config = _config(tmp_path, target, duplicates="drop")
    result = pipeline_flow(str(config))
    assert result.outcome == "promoted", result.message
    copies = {name: causes["duplicates"] for name, causes in result.landing.dropped.items()}
    assert sorted(copies) == ["survey-00.parquet", "survey-01.parquet"]
    assert _bronze_rows(tmp_path) == rows - sum(copies.values())

    code, out, _ = _selfheal(config, monkeypatch, capsys, "pipeline", "status")

    assert code == 0
    total = sum(copies.values())
    assert f"landed 2 file(s), quarantined 0; rows dropped: {total} duplicates" in out
    assert f"rows dropped from accepted batches (all runs): {total} duplicates" in out


def test_quarantine_mode_refuses_above_the_limit_and_drops_below(tmp_path: Path) -> None:
    rows, target = _survey_batches(tmp_path / "landing")
    config = _config(tmp_path, target, duplicates="quarantine", max_duplicate_fraction=0.2)
    result = pipeline_flow(str(config))
    assert result.outcome == "promoted", result.message
    dropped = sum(causes["duplicates"] for causes in result.landing.dropped.values())
    assert dropped and _bronze_rows(tmp_path) == rows - dropped

    _survey_batches(tmp_path / "more")
    for path in (tmp_path / "more").iterdir():
        frame = pd.read_parquet(path)
        frame.iloc[:, 0] = frame.iloc[:, 0] + 1e-6  # new values, same 16% copies
        frame.to_parquet(tmp_path / "landing" / f"again-{path.name}", index=False)
    strict = _config(tmp_path, target, duplicates="quarantine", max_duplicate_fraction=0.1)
    refused = pipeline_flow(str(strict))
    assert [name for name, _ in refused.landing.quarantined] == ["again-survey-00.parquet", "again-survey-01.parquet"]
    assert all("duplicate_fraction<=0.1 failed" in reason for _, reason in refused.landing.quarantined)
