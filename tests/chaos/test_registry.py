"""Registry faults on a real MLflow SQLite store: a bad champion, a locked store; and their undo."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from chaoslib.exceptions import ActivityFailed

from chaos import ledger
from chaos.registry import _store, actions, probes
from chaos.workload import read_records
from serving import processes
from tests.chaos.conftest import MODEL, TARGET, FraudStore, LiveServer


def _auc(store: FraudStore, version: str) -> float:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from serving.modelio import load_version

    frame = pd.DataFrame(read_records(store.labeled))
    registry = _store.registry(store.tracking_uri, MODEL)
    model = load_version(registry, registry.version(version))
    return float(roc_auc_score(frame[TARGET], model.predict_proba(frame[store.features])[:, 1]))


@pytest.mark.slow
def test_bad_model_becomes_champion_then_restore_gives_it_back(
    fraud_store: FraudStore, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: ["scikit-learn"])
    uri = fraud_store.tracking_uri
    assert probes.champion_version(uri, MODEL) == "1"
    assert probes.seconds_until_champion_is_not_bad(uri, MODEL, timeout=5, configuration=config) < 5
    done = actions.promote_bad_model(uri, MODEL, str(fraud_store.lake_root), TARGET, configuration=config)
    assert done["bad_version"] == "2" and done["replaced"] == "1"
    assert probes.champion_version(uri, MODEL) == "2"
    assert probes.champion_version(uri, MODEL, alias="previous") == "1"
    assert _auc(fraud_store, "1") > 0.8 and _auc(fraud_store, "2") < 0.3  # confidently wrong
    client = fraud_store.client()
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["selfheal.chaos"] == "bad_model"
    # Stamped as the registry stamps every promotion, so the healer sees a fresh deploy.
    from flows.registry import PROMOTED_AT_TAG

    assert datetime.now(UTC) - datetime.fromisoformat(tags[PROMOTED_AT_TAG]) < timedelta(minutes=1)
    assert ledger.last_event(config, "fault") == done["at"]
    with pytest.raises(ActivityFailed, match=r"@champion is v2 \(the bad model\)"):
        probes.seconds_until_champion_is_not_bad(uri, MODEL, timeout=1, configuration=config)
    restored = actions.restore_champion(uri, MODEL, configuration=config)
    assert restored["restored"] is True
    assert probes.champion_version(uri, MODEL) == "1"
    assert probes.champion_version(uri, MODEL, alias="previous") == ""
    assert probes.seconds_until_champion_is_not_bad(uri, MODEL, timeout=5, configuration=config) < 60
    # The healer got there first: nothing to undo.
    assert actions.restore_champion(uri, MODEL, configuration=config)["restored"] is False


def test_restore_champion_without_a_fault_changes_nothing(fraud_store: FraudStore, config: dict[str, Any]) -> None:
    assert actions.restore_champion(fraud_store.tracking_uri, MODEL, configuration=config) == {
        "restored": False,
        "detail": "no bad model was promoted in this run",
    }


def test_promote_bad_model_needs_a_champion(fraud_store: FraudStore) -> None:
    fraud_store.client().delete_registered_model_alias(MODEL, "champion")
    with pytest.raises(ActivityFailed, match="has no @champion"):
        actions.promote_bad_model(fraud_store.tracking_uri, MODEL, str(fraud_store.lake_root), TARGET)


def test_locked_store_does_not_answer_until_restored(fraud_store: FraudStore, config: dict[str, Any]) -> None:
    uri = fraud_store.tracking_uri
    assert probes.seconds_until_tracking_store_answers(uri, timeout=5, configuration=config) < 5
    done = actions.make_tracking_store_unreachable(uri, duration=60, configuration=config)
    try:
        assert processes.alive(done["pid"]) and "locked" in done["seen"]
        ok, seen = _store.answers(uri, timeout=0.5)
        assert not ok and "database is locked" in seen
        with pytest.raises(ActivityFailed, match="database is locked"):
            probes.seconds_until_tracking_store_answers(uri, timeout=1, since="now", configuration=config)
    finally:
        restored = actions.restore_tracking_store(uri, configuration=config)
    assert restored["stopped"] == [done["pid"]] and restored["answers"] is True
    assert probes.seconds_until_tracking_store_answers(uri, timeout=5, configuration=config) < 5
    assert str(fraud_store.client().get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_the_lock_lets_go_by_itself(fraud_store: FraudStore) -> None:
    done = actions.make_tracking_store_unreachable(fraud_store.tracking_uri, duration=1.0)
    assert not _store.answers(fraud_store.tracking_uri, timeout=0.2)[0]
    assert processes.wait_gone([done["pid"]], timeout=10) == []
    processes.wait_until(lambda: _store.answers(fraud_store.tracking_uri)[0], 10, "the store to answer")


def test_only_sqlite_stores_can_be_locked() -> None:
    with pytest.raises(ActivityFailed, match="cut its namespace link"):
        actions.make_tracking_store_unreachable("http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="only sqlite"):
        _store.answers("postgresql://db/mlflow")


@pytest.mark.parametrize(
    ("uri", "path"),
    [("sqlite:////abs/mlflow.db", "/abs/mlflow.db"), ("sqlite:///rel/mlflow.db", "rel/mlflow.db"), ("http://x", None)],
)
def test_sqlite_paths(uri: str, path: str | None) -> None:
    found = _store.sqlite_path(uri)
    assert (str(found) if found else None) == path


@pytest.mark.slow
def test_a_foreign_champion_is_refused_by_the_server_and_undone(
    fraud_store: FraudStore, config: dict[str, Any], live_server: Callable[..., LiveServer]
) -> None:
    import cloudpickle

    server = live_server()
    uri = fraud_store.tracking_uri
    done = actions.promote_foreign_model(uri, MODEL, server_url=server.url, configuration=config)
    assert done["foreign"] == "2" and done["champion"] == "1"
    assert done["server_reloaded"] is False  # the server answered 409: it refused to load it
    assert not done["source"].startswith(fraud_store.artifact_root.as_uri())
    assert probes.champion_version(uri, MODEL) == "2"
    assert probes.champion_version(uri, MODEL, alias="previous") == "1"
    assert probes.seconds_until_foreign_model_refused(server.url, timeout=10, configuration=config) < 60
    # The other worker refuses it when it sees the reload in the control file (within a second or so).
    refusals: list[dict[str, str]] = []

    def reported() -> bool:
        refusals.append(httpx.get(f"{server.url}/ready").json()["refused"])
        return refusals[-1] is not None

    processes.wait_until(reported, 30, "a worker to report the refusal")
    assert refusals[-1]["version"] == "2" and refusals[-1]["reason"] == "outside_root"
    with pytest.raises(ActivityFailed, match=r"@champion is v2 \(the foreign model\)"):
        probes.seconds_until_champion_is_not_bad(uri, MODEL, timeout=1, tag="foreign_model", configuration=config)
    # The probe can fail: a process that unpickles the artifact runs its code.
    cloudpickle.loads((Path(done["folder"]) / "model" / "model.pkl").read_bytes())
    with pytest.raises(ActivityFailed, match="the foreign model's code ran"):
        probes.seconds_until_foreign_model_refused(server.url, timeout=5, configuration=config)
    undone = actions.remove_foreign_model(uri, MODEL, server_url=server.url, configuration=config)
    assert undone["restored"] is True, undone
    assert probes.champion_version(uri, MODEL) == "1"
    assert probes.champion_version(uri, MODEL, alias="previous") == ""
    assert [str(v.version) for v in fraud_store.client().search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert not Path(done["folder"]).exists()
