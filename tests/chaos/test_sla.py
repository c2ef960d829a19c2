"""The SLA as the experiments read it: same defaults and overrides as ``flows.config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import sla
from flows.config import GateConfig, SLAConfig, load_config


def test_defaults_agree_with_the_config_model(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.yaml")
    defaults = SLAConfig()
    assert sla.service_levels(missing) == {
        "availability": defaults.availability,
        "rows_lost": defaults.rows_lost,
        "mttr_seconds": defaults.mttr_seconds,
        "healing_off_mttr_seconds": defaults.healing_off_mttr_seconds,
    }
    assert sla.quality_minimum(missing) == GateConfig().minimum


def test_file_values_and_the_lookup_order(tmp_path: Path) -> None:
    path = tmp_path / "selfheal.yaml"
    path.write_text(
        "gate: {minimum: 0.8}\n"
        "slas:\n  availability: 0.95\n  rows_lost: 0\n"
        "  mttr_seconds: {default: 90, serving_down: 30, serving-kill-worker: 5}\n"
    )
    cfg = load_config(path)
    assert sla.availability(str(path)) == cfg.slas.availability == 0.95
    assert sla.availability_tolerance(str(path)) == [0.95, 1.0]
    assert sla.rows_lost_tolerance(str(path)) == [0, 0]
    assert sla.mttr_seconds(str(path), ["serving-kill-worker", "serving_down"]) == 5
    assert sla.mttr_seconds(str(path), ["serving-kill-server", "serving_down"]) == 30
    assert sla.mttr_seconds(str(path), ["registry-bad-model", "bad_deploy"]) == 90
    # A cause the file does not name keeps its shipped default (a drift repair is a retrain).
    assert sla.mttr_tolerance(str(path), ["data-drift-concept", "concept_drift"]) == [0.0, 120.0]
    assert cfg.slas.mttr_seconds["concept_drift"] == 120 and cfg.slas.mttr_seconds["default"] == 90
    assert sla.quality_minimum(str(path)) == cfg.gate.minimum == 0.8


def test_environment_overrides_like_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "selfheal.yaml"
    path.write_text("slas: {availability: 0.95}\n")
    monkeypatch.setenv("SELFHEAL_SLAS__AVAILABILITY", "0.999")
    monkeypatch.setenv("SELFHEAL_SLAS__MTTR_SECONDS", '{"default": 45}')
    assert sla.availability(str(path)) == load_config(path).slas.availability == 0.999
    assert sla.mttr_seconds(str(path)) == load_config(path).slas.mttr_seconds["default"] == 45


def test_an_impossible_availability_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "selfheal.yaml"
    path.write_text("slas: {availability: 1.5}\n")
    with pytest.raises(ValueError, match="availability"):
        sla.service_levels(str(path))
