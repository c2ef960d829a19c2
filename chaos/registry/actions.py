"""Registry faults: a bad model promoted to champion, a tracking store that stops answering; and their undo.

The bad model is real: a model with the champion's input signature, trained on the
lake's silver rows with the labels inverted (confidently wrong, as a label-encoding
bug would make it), logged in the project's model format and given the ``champion``
alias, the old champion becoming ``previous``, exactly as a promotion does. The
unreachable store is real too: for a SQLite store a separate process holds an
exclusive lock on the database (every reader and writer times out), for a limited
time so a forgotten fault ends by itself.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.registry import _store
from serving import processes

__all__ = [
    "make_tracking_store_unreachable",
    "promote_bad_model",
    "restore_champion",
    "restore_champion_before_fault",
    "restore_tracking_store",
]

logger = logging.getLogger(__name__)

BAD_MODEL_TAG = "selfheal.chaos"
#: When a version became champion: the registry's contract (``flows.registry.PROMOTED_AT_TAG``).
PROMOTED_AT_TAG = "selfheal.promoted_at"
#: Tags of the old champion the bad model does not copy: the pipeline's resume key (it would
#: look already trained) and the old promotion time (it is promoted now).
_NOT_CLAIMED = frozenset({"selfheal.train_key", PROMOTED_AT_TAG})


def _register_inverted(
    client: Any,
    version: Any,
    model_name: str,
    champion: str,
    lake: Any,
    silver_table: str,
    target: str,
    seed: int,
    flip: float = 1.0,
    tag: str = "bad_model",
) -> Any:
    """Fit a model on silver with ``flip`` of its labels inverted; log it as a new version (inside ``mlflow_uris``)."""
    import mlflow
    from mlflow.models import get_model_info

    from serving.modelio import log_sklearn_model

    signature = get_model_info(f"models:/{model_name}/{champion}").signature
    if signature is None:
        raise ActivityFailed(f"{model_name} v{champion} has no signature to copy")
    features = list(signature.inputs.input_names())
    frame = lake.read(silver_table, columns=[*features, target]).to_pandas().dropna(subset=[target])
    model = _fit_inverted(frame, features, target, seed, flip)
    run = client.get_run(version.run_id) if version.run_id else None
    with mlflow.start_run(experiment_id=run.info.experiment_id if run else None, run_name=f"chaos-{tag}"):
        mlflow.log_metrics(dict(run.data.metrics) if run else {})
        mlflow.set_tag(BAD_MODEL_TAG, tag)
        return log_sklearn_model(model, frame[features].head(5), registered_model_name=model_name)


def _fit_inverted(frame: Any, features: list[str], target: str, seed: int, flip: float = 1.0) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    text = [c for c in features if frame[c].dtype == object or str(frame[c].dtype).startswith("str")]
    numbers = [c for c in features if c not in text]
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    prepare = ColumnTransformer([("text", encoder, text), ("numbers", "passthrough", numbers)])
    model = Pipeline([("prepare", prepare), ("model", HistGradientBoostingClassifier(max_iter=30, random_state=seed))])
    labels = frame[target].astype("int64")
    if flip >= 1.0:
        labels = 1 - labels
    else:  # label noise: a random ``flip`` of the rows learn the wrong answer
        import numpy as np

        chosen = np.random.default_rng(seed).random(len(labels)) < flip
        labels = labels.where(~chosen, 1 - labels)
    return model.fit(frame[features], labels)


def promote_bad_model(
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    target: str,
    silver_table: str = "silver",
    seed: int = 0,
    server_url: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Register a model that inverts the labels it learned and make it the champion (the old one becomes previous).

    It claims the champion's metrics and lineage, as a bad deploy does, and is stamped
    promoted now (``selfheal.promoted_at``), as every promotion is. Given the server URL and
    ``SELFHEAL_ADMIN_TOKEN``, the server is told to reload at once (else it polls).
    Undo with ``restore_champion``.
    """
    from checkpoints import Lake

    client = _store.client(tracking_uri)
    champion = _store.alias_version(client, model_name, "champion")
    if champion is None:
        raise ActivityFailed(f"model {model_name!r} has no @champion in {tracking_uri}: nothing to replace")
    previous = _store.alias_version(client, model_name, "previous")
    version = client.get_model_version(model_name, champion)
    with _store.mlflow_uris(tracking_uri):
        info = _register_inverted(client, version, model_name, champion, Lake(lake_root), silver_table, target, seed)
    bad = str(info.registered_model_version)
    for key, value in (version.tags or {}).items():
        if key not in _NOT_CLAIMED:
            client.set_model_version_tag(model_name, bad, key, value)
    client.set_model_version_tag(model_name, bad, BAD_MODEL_TAG, "bad_model")
    # Exactly what a promotion does: aliases moved, and the time it happened.
    client.set_registered_model_alias(model_name, "previous", champion)
    client.set_registered_model_alias(model_name, "champion", bad)
    client.set_model_version_tag(model_name, bad, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
    at = ledger.record(
        configuration,
        "fault",
        fault="promote_bad_model",
        detail={"model": model_name, "bad": bad, "champion": champion, "previous": previous},
    )
    reloaded = _notify(server_url) if server_url else None
    logger.info("promoted bad model %s v%s over v%s", model_name, bad, champion)
    return {"bad_version": bad, "replaced": champion, "previous": previous, "server_reloaded": reloaded, "at": at}


def _notify(server_url: str) -> bool:
    import httpx

    token = os.environ.get("SELFHEAL_ADMIN_TOKEN")
    if not token:
        return False
    try:
        response = httpx.post(
            f"{server_url.rstrip('/')}/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        logger.warning("could not ask %s to reload: %s", server_url, exc)
        return False
    return response.status_code == 200


def _restored(
    configuration: Configuration | None, fault: str, outcome: dict[str, Any], server_url: str | None
) -> dict[str, Any]:
    """Finish an undo: ask the server to reload (given one), record the restore in the ledger."""
    if server_url:
        outcome["server_reloaded"] = _notify(server_url)
    ledger.record(configuration, "restore", fault=fault, detail=outcome)
    return outcome


def restore_champion(
    tracking_uri: str,
    model_name: str,
    server_url: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Undo promote_bad_model: if @champion still names the bad version, give the aliases back to the old champion.

    If the healer already rolled back (champion is no longer the bad version), nothing
    changes. Needs the fault ledger to know which version was bad.
    """
    client = _store.client(tracking_uri)
    faults = [e for e in ledger.current_run(configuration) if e.fault == "promote_bad_model"]
    if not faults:
        return {"restored": False, "detail": "no bad model was promoted in this run"}
    detail = faults[-1].detail
    champion = _store.alias_version(client, model_name, "champion")
    if champion != detail["bad"]:
        outcome = {"restored": False, "detail": f"champion is v{champion}, not the bad v{detail['bad']}"}
    else:
        client.set_registered_model_alias(model_name, "champion", detail["champion"])
        client.set_model_version_tag(model_name, detail["champion"], PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        if detail.get("previous"):
            client.set_registered_model_alias(model_name, "previous", detail["previous"])
        else:
            client.delete_registered_model_alias(model_name, "previous")
        outcome = {"restored": True, "detail": f"champion back to v{detail['champion']}"}
    client.set_model_version_tag(model_name, detail["bad"], BAD_MODEL_TAG, "bad_model (rolled back)")
    return _restored(configuration, "restore_champion", outcome, server_url)


def restore_champion_before_fault(
    tracking_uri: str,
    model_name: str,
    server_url: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Give @champion back to the version that was champion when this run's fault was injected.

    For faults whose rollback puts the old world back (a drifted stream restored): a model
    the healer trained for the fault's world is wrong for it again. The version promoted
    last before the fault (``selfheal.promoted_at``) is the one; the current champion
    becomes ``previous``. Nothing changes when it still is the champion.
    """
    fault_at = ledger.last_event(configuration, "fault")
    if fault_at is None:
        return {"restored": False, "detail": "no fault was injected in this run"}
    client = _store.client(tracking_uri)
    promoted = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        stamp = (mv.tags or {}).get(PROMOTED_AT_TAG)
        if stamp and datetime.fromisoformat(stamp).timestamp() <= fault_at:
            promoted.append((datetime.fromisoformat(stamp).timestamp(), str(mv.version)))
    champion = _store.alias_version(client, model_name, "champion")
    if not promoted:
        outcome: dict[str, Any] = {"restored": False, "detail": "no version was promoted before the fault"}
    elif max(promoted)[1] == champion:
        outcome = {"restored": False, "detail": f"v{champion} was champion before the fault and still is"}
    else:
        before = max(promoted)[1]
        client.set_registered_model_alias(model_name, "champion", before)
        client.set_model_version_tag(model_name, before, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())
        if champion:
            client.set_registered_model_alias(model_name, "previous", champion)
        outcome = {"restored": True, "detail": f"champion v{champion} -> v{before} (champion before the fault)"}
    return _restored(configuration, "restore_champion_before_fault", outcome, server_url)


def make_tracking_store_unreachable(
    tracking_uri: str,
    duration: float = 120.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Make a SQLite tracking store stop answering: a separate process holds an exclusive lock for at most the duration.

    Every MLflow call then waits for its busy timeout and fails. For a tracking server
    behind a namespace link, cut the link instead (``chaos.network.actions.cut_link``).
    Undo with ``restore_tracking_store``.
    """
    db = _store.sqlite_path(tracking_uri)
    if db is None:
        raise ActivityFailed(
            f"{tracking_uri}: only a sqlite:/// store can be locked; "
            "for a tracking server, cut its namespace link (chaos.network.actions.cut_link)"
        )
    if not db.exists():
        raise ActivityFailed(f"tracking store {db} does not exist")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    proc = subprocess.Popen(
        [sys.executable, "-m", _store.LOCKER_MODULE, str(db), str(duration)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if line != "locked":
        proc.kill()
        raise ActivityFailed(f"could not lock {db}: {proc.stderr.read().decode() if proc.stderr else line}")
    ok, seen = _store.answers(tracking_uri, timeout=0.5)
    if ok:
        proc.kill()
        raise ActivityFailed(f"{db} still answers with the lock held: {seen}")
    at = ledger.record(
        configuration, "fault", fault="make_tracking_store_unreachable", detail={"db": str(db), "pid": proc.pid}
    )
    logger.info("tracking store %s locked by pid %d for at most %gs", db, proc.pid, duration)
    return {"db": str(db), "pid": proc.pid, "duration": duration, "seen": seen, "at": at}


def restore_tracking_store(tracking_uri: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Undo make_tracking_store_unreachable: stop every lock holder of that database; then it answers again."""
    db = _store.sqlite_path(tracking_uri)
    if db is None:
        raise ActivityFailed(f"{tracking_uri}: only a sqlite:/// store is locked by this extension")
    holders = _store.lockers(db)
    left = processes.kill(holders, timeout=5.0)
    if left:
        raise ActivityFailed(f"lock holders {left} of {db} still alive")
    ok, seen = _store.answers(tracking_uri, timeout=5.0)
    ledger.record(configuration, "restore", fault="restore_tracking_store", detail={"db": str(db), "stopped": holders})
    return {"db": str(db), "stopped": holders, "answers": ok, "seen": seen}
