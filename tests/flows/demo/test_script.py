"""The demo's own config: what it takes from the user's and what it always sets."""

from __future__ import annotations

from pathlib import Path

from flows.config import SelfhealConfig, load_config
from flows.demo.script import demo_config


def test_the_demo_describes_its_stream_whatever_the_users_data_section(tmp_path: Path) -> None:
    users = {
        "target": "churned",
        "id_columns": [],
        "schema": {"tenure": "int64"},
        "expectations": {"ranges": {"tenure": [0, 600]}},
    }
    base = SelfhealConfig(home=str(tmp_path), data=users)
    (tmp_path / "demo").mkdir()
    cfg = load_config(demo_config(base, tmp_path / "demo", 8765), check_estimator=False)
    assert cfg.data.target == "is_fraud" and cfg.data.task == "binary"
    assert cfg.data.time_column == "event_time"
    assert cfg.data.id_columns == ["transaction_id"]  # a join key, never a feature
    assert cfg.data.schema_ is None and cfg.data.expectations == type(cfg.data.expectations)()
