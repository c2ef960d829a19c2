"""The healer's tracking-store probe: an outage is reported, a bug is raised, a store that answers is quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.config import SelfhealConfig
from flows.healer.machine import make_context
from flows.healer.remedies import HealContext, tracking_store_error


def _context(tmp_path: Path, tracking_uri: str) -> HealContext:
    cfg = SelfhealConfig(home=str(tmp_path), tracking_uri=tracking_uri, lake={"root": str(tmp_path / "lake")})
    return make_context(cfg, None)


def test_a_store_that_answers_is_no_error(tmp_path: Path) -> None:
    assert tracking_store_error(_context(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}"), timeout=60) is None


def test_a_broken_store_is_reported_as_what_it_says(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not a sqlite database " * 100)
    error = tracking_store_error(_context(tmp_path, f"sqlite:///{store}"), timeout=60)
    assert error is not None and error.startswith("DatabaseError") and "not a database" in error


class _Bug:
    def search_registered_models(self, **_: Any) -> None:
        raise TypeError("a bug in the probe, not an outage")

    def model_tags(self, name: str) -> None:
        raise TypeError("a bug in the probe, not an outage")


@pytest.mark.parametrize("light", [True, False], ids=["light-reads", "mlflow-client"])
def test_a_bug_is_raised_not_reported_as_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, light: bool
) -> None:
    """Through the MLflow-free reader (sqlite:///, http) and through MLflow's client (any other store) alike."""
    ctx = _context(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    if light:
        monkeypatch.setattr(ctx.registry, "light", _Bug())
    else:
        monkeypatch.setattr(ctx.registry, "light", None)
        monkeypatch.setattr(type(ctx.registry), "client", property(lambda self: _Bug()))
    with pytest.raises(TypeError, match="a bug in the probe"):
        tracking_store_error(ctx, timeout=60)
