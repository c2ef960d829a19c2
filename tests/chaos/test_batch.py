"""The batch-output fault on real parts: a real `selfheal score` run against a registry and a lake.

The action moves the predictions table aside for the outage and scores a new batch file
meanwhile, in a child process; the probe counts the rows with deltalake. Replaying (what
the healer's remedy runs) is the repair, not the outage's end.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaoslib.exceptions import ActivityFailed

from chaos.batch import actions, probes
from checkpoints import Lake
from flows.batch.scoring import PREDICTIONS
from flows.cli import main
from tests.flows.batch.test_delivery import Store, _transactions, _write, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A registry with one champion, loaded (``tests.flows.batch``'s)."""
    yield from make_store(tmp_path_factory)


def _configuration(tmp_path: Path) -> dict[str, str]:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(json.dumps({"event": "run", "at": 0.0}) + "\n")
    return {"selfheal_ledger": str(ledger)}


def test_an_outage_dead_letters_the_batch_and_only_a_replay_lands_it_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = store.config(tmp_path)
    configuration = _configuration(tmp_path)
    lake_root = str(tmp_path / "lake")
    _write(tmp_path / "landing" / "batch-00000.parquet", _transactions(1, 120))
    _write(tmp_path / "other" / "seed.parquet", _transactions(2, 10))
    command = [sys.executable, "-m", "flows.cli", "-c", str(config_path)]
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config_path))
    import serving.processes

    monkeypatch.setattr(serving.processes, "yield_cpu", lambda pid=None: True)
    assert main(["score", "--input", str(tmp_path / "other")]) == 0  # the table exists before the outage
    before = Lake(lake_root).read(PREDICTIONS).num_rows

    done = actions.score_during_output_outage(
        lake_root,
        str(tmp_path / "landing"),
        str(tmp_path / "batch-input"),
        command,
        cwd=str(tmp_path),
        outage_seconds=1.0,
        log_file=str(tmp_path / "score.log"),
        configuration=configuration,
    )

    assert (done["rows"], done["dead_lettered"], done["table_existed"]) == (120, 120, True)
    assert Lake(lake_root).read(PREDICTIONS).num_rows == before  # the table is back, untouched
    assert not (tmp_path / "lake" / ".predictions.outage").exists()
    with pytest.raises(ActivityFailed, match=r"0/120 row\(s\) predicted once, 0 more than once, 120 waiting"):
        probes.seconds_until_batch_rows_landed_once(lake_root, timeout=1.0, configuration=configuration)

    assert main(["dlq", "replay"]) == 0  # what the healer's replay_dlq runs
    assert probes.seconds_until_batch_rows_landed_once(lake_root, timeout=5.0, configuration=configuration) >= 0
    assert Lake(lake_root).read(PREDICTIONS).num_rows == before + 120
    assert actions.restore_output_table(lake_root, configuration=configuration)["undone"] == "nothing to undo"
