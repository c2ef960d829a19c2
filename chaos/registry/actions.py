"""Registry faults: a bad model promoted to champion, a foreign artifact made champion, a tracking store
that stops answering; and their undo.

The bad model is real: a model with the champion's input signature, trained on the
lake's silver rows with the labels inverted (confidently wrong, as a label-encoding
bug would make it), logged in the project's model format and given the ``champion``
alias, the old champion becoming ``previous``, exactly as a promotion does. The
unreachable store is real too: for a SQLite store a separate process holds an
exclusive lock on the database (every reader and writer times out), for a limited
time so a forgotten fault ends by itself. The foreign artifact is the champion's own
model, cloudpickled with a wrapper whose loading writes a marker file (``_foreign``), in a
folder outside the registry's artifact root, registered and made champion.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.registry import _foreign, _store
from checkpoints import Lake
from serving import processes
from serving.client import ServingClient
from serving.registry import (
    CHAMPION,
    CHAOS_TAG,
    PREVIOUS,
    PROMOTED_AT_TAG,
    TRAIN_KEY_TAG,
    ModelRegistry,
    ModelVersionRef,
)

__all__ = [
    "make_tracking_store_unreachable",
    "promote_bad_model",
    "promote_foreign_model",
    "remove_foreign_model",
    "restore_champion",
    "restore_champion_before_fault",
    "restore_tracking_store",
]

logger = logging.getLogger(__name__)

BAD_MODEL = "bad_model"
FOREIGN_MODEL = "foreign_model"
#: The file the foreign model's code writes when something loads it.
FOREIGN_MARKER = "foreign-code-ran"
#: Tags of the old champion the bad model does not copy: the pipeline's resume key (it would
#: look already trained) and the old promotion time (it is promoted now).
_NOT_CLAIMED = frozenset({TRAIN_KEY_TAG, PROMOTED_AT_TAG})


@dataclass(frozen=True)
class Training:
    """What a chaos model learns from: the lake's silver table, its label column, a seed."""

    lake_root: str
    silver_table: str
    target: str
    seed: int
    storage_options: dict[str, str] | None = None  # the lake's, when it is on object storage


def _register_inverted(
    registry: ModelRegistry, champion: ModelVersionRef, training: Training, flip: float = 1.0, tag: str = BAD_MODEL
) -> str:
    """Fit a model on silver with ``flip`` of its labels inverted; log it as a new version of the model; its version.

    The fit and the logging run at nice 19 on one core (``processes.run_yielding``): on a
    real system the faulty model is built elsewhere, and built here at full priority on
    every core it starved the sandbox's model server for seconds before the fault began
    (the fresh-clone matrix of c32a062 opened a false ``latency`` incident during
    release-canary-worse: p99 ~67 ms against ~23 ms, three 1 s windows in a row).
    """
    return processes.run_yielding(lambda: _fit_and_log(registry, champion, training, flip, tag))


def _fit_and_log(registry: ModelRegistry, champion: ModelVersionRef, training: Training, flip: float, tag: str) -> str:
    # why local: chaos discovery imports every activity module; mlflow (also under serving.modelio) is slow
    import mlflow
    from mlflow.models import get_model_info

    from serving.modelio import log_sklearn_model, mlflow_uris

    assert registry.tracking_uri is not None
    with mlflow_uris(registry.tracking_uri):
        signature = get_model_info(champion.uri).signature
        if signature is None:
            raise ActivityFailed(f"{champion.name} v{champion.version} has no signature to copy")
        features = list(signature.inputs.input_names())
        columns = [*features, training.target]
        lake = Lake(training.lake_root, training.storage_options)
        frame = lake.read(training.silver_table, columns=columns).to_pandas()
        frame = frame.dropna(subset=[training.target])
        model = _fit_inverted(frame, features, training.target, training.seed, flip)
        run_id = champion.run_id
        run = registry.call(f"run {run_id}", lambda c: c.get_run(run_id)) if run_id else None
        with mlflow.start_run(experiment_id=run.info.experiment_id if run else None, run_name=f"chaos-{tag}"):
            mlflow.log_metrics(dict(run.data.metrics) if run else {})
            mlflow.set_tag(CHAOS_TAG, tag)
            info = log_sklearn_model(model, frame[features].head(5), registered_model_name=champion.name)
    return str(info.registered_model_version)


def _fit_inverted(frame: Any, features: list[str], target: str, seed: int, flip: float = 1.0) -> Any:
    # why local: sklearn is slow to import, and chaos discovery imports every activity module
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
        import numpy as np  # why local: as the sklearn imports above

        chosen = np.random.default_rng(seed).random(len(labels)) < flip
        labels = labels.where(~chosen, 1 - labels)
    from threadpoolctl import threadpool_limits  # why local: as the sklearn imports above

    with threadpool_limits(limits=1):  # an OpenMP pool created before would not run at the thread's nice value
        return model.fit(frame[features], labels)


def _champion(registry: ModelRegistry) -> ModelVersionRef:
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        raise ActivityFailed(
            f"model {registry.model_name!r} has no @{CHAMPION} in {registry.tracking_uri}: nothing to replace"
        )
    return champion


def _version(ref: ModelVersionRef | None) -> str | None:
    return ref.version if ref is not None else None


def _make_champion(registry: ModelRegistry, version: str, previous: str | None) -> None:
    """Exactly what a promotion does: the aliases moved (``previous`` kept when None), and the time it happened."""
    registry.set_tag(version, PROMOTED_AT_TAG, datetime.now(UTC).isoformat())  # first, as Registry.promote does
    if previous:
        registry.set_alias(PREVIOUS, previous)
    registry.set_alias(CHAMPION, version)


def promote_bad_model(
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    target: str,
    silver_table: str = "silver",
    seed: int = 0,
    server_url: str | None = None,
    storage_options: dict[str, str] | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Register a model that inverts the labels it learned and make it the champion (the old one becomes previous).

    It claims the champion's metrics and lineage, as a bad deploy does, and is stamped
    promoted now (``selfheal.promoted_at``), as every promotion is. Given the server URL and
    ``SELFHEAL_ADMIN_TOKEN``, the server is told to reload at once (else it polls).
    ``storage_options`` are the lake's when it is on object storage (``lake.storage_options``).
    Undo with ``restore_champion``.
    """
    registry = _store.registry(tracking_uri, model_name)
    champion = _champion(registry)
    previous = _version(registry.by_alias(PREVIOUS))
    bad = _register_inverted(registry, champion, Training(lake_root, silver_table, target, seed, storage_options))
    for key, value in champion.tags.items():
        if key not in _NOT_CLAIMED:
            registry.set_tag(bad, key, value)
    registry.set_tag(bad, CHAOS_TAG, BAD_MODEL)
    _make_champion(registry, bad, previous=champion.version)
    at = ledger.record(
        configuration,
        "fault",
        fault="promote_bad_model",
        detail={
            "model": model_name,
            "bad": bad,
            "champion": champion.version,
            "previous": previous,
        },
    )
    reloaded = _reload(server_url) if server_url else None
    logger.info("promoted bad model %s v%s over v%s", model_name, bad, champion.version)
    return {
        "bad_version": bad,
        "replaced": champion.version,
        "previous": previous,
        "server_reloaded": reloaded,
        "at": at,
    }


def _reload(server_url: str) -> bool:
    with ServingClient(server_url) as server:
        return server.reload()


def _restored(
    outcome: dict[str, Any], fault: str, server_url: str | None, configuration: Configuration | None
) -> dict[str, Any]:
    """Tell the server (if any), record the restore in the ledger, and return the outcome."""
    if server_url:
        outcome["server_reloaded"] = _reload(server_url)
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
    detail = ledger.last_fault(configuration, "promote_bad_model")
    if detail is None:
        return {"restored": False, "detail": "no bad model was promoted in this run"}
    registry = _store.registry(tracking_uri, model_name)
    champion = registry.by_alias(CHAMPION)
    version = _version(champion)
    if version != detail["bad"]:
        outcome = {"restored": False, "detail": f"champion is v{version}, not the bad v{detail['bad']}"}
    else:
        _make_champion(registry, detail["champion"], previous=detail.get("previous"))
        if not detail.get("previous"):
            registry.delete_alias(PREVIOUS)
        outcome = {"restored": True, "detail": f"champion back to v{detail['champion']}"}
    registry.set_tag(detail["bad"], CHAOS_TAG, f"{BAD_MODEL} (rolled back)")
    return _restored(outcome, "restore_champion", server_url, configuration)


#: How long a rollback waits for a pipeline run in flight to finish (one training run on 2 busy cores).
_PIPELINE_RUN_SECONDS = 90.0


def _wait_for_pipeline_runs(configuration: Configuration | None, timeout: float = _PIPELINE_RUN_SECONDS) -> None:
    """Until no ``selfheal pipeline run`` of the sandbox is going: a run that read the fault's batches
    promotes its model when it ends, and a restore made before that would be undone by it (seen on a
    slow machine: the drift experiment's run promoted a drifted model after the rollback)."""
    root = (configuration or {}).get("sandbox")
    words = ["pipeline", "run", *([str(Path(root).resolve() / "selfheal.yaml")] if root else [])]
    try:
        processes.wait_until(lambda: not processes.find(words), timeout, "the pipeline run in flight", interval=0.5)
    except TimeoutError:
        logger.warning("a pipeline run is still going after %.0fs: restoring the champion anyway", timeout)


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
    becomes ``previous``. Nothing changes when it still is the champion. A pipeline run in
    flight is waited for first (up to 90 s): it would promote after the restore.
    """
    fault_at = ledger.last_event(configuration, "fault")
    if fault_at is None:
        return {"restored": False, "detail": "no fault was injected in this run"}
    _wait_for_pipeline_runs(configuration)
    registry = _store.registry(tracking_uri, model_name)
    promoted = []
    for mv in registry.versions():
        stamp = mv.tags.get(PROMOTED_AT_TAG)
        if stamp and datetime.fromisoformat(stamp).timestamp() <= fault_at:
            promoted.append((datetime.fromisoformat(stamp).timestamp(), mv.version))
    champion = _version(registry.by_alias(CHAMPION))
    if not promoted:
        outcome: dict[str, Any] = {"restored": False, "detail": "no version was promoted before the fault"}
    elif max(promoted)[1] == champion:
        outcome = {"restored": False, "detail": f"v{champion} was champion before the fault and still is"}
    else:
        before = max(promoted)[1]
        _make_champion(registry, before, previous=champion)
        outcome = {"restored": True, "detail": f"champion v{champion} -> v{before} (champion before the fault)"}
    return _restored(outcome, "restore_champion_before_fault", server_url, configuration)


def promote_foreign_model(
    tracking_uri: str,
    model_name: str,
    server_url: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Register a cloudpickled model stored outside the registry's artifact root and make it the champion.

    The artifact is the champion's own model (it would serve well), wrapped so that
    unpickling it writes ``<folder>/foreign-code-ran``: if that file ever appears, some
    process loaded it and ran its code. It lives in a fresh folder under the system's
    temporary directory, claims the champion's tags, and is promoted as a promotion does
    (the old champion becomes previous). Given the server URL and ``SELFHEAL_ADMIN_TOKEN``,
    the server is told to reload at once. Undo with ``remove_foreign_model``.
    """
    from serving.modelio import load_sklearn_model  # why local: mlflow and skops are slow to import

    registry = _store.registry(tracking_uri, model_name)
    champion = _champion(registry)
    previous = _version(registry.by_alias(PREVIOUS))
    folder = Path(tempfile.mkdtemp(prefix="selfheal-foreign-"))
    marker = folder / FOREIGN_MARKER
    template = Path(registry.download(champion, into=str(folder / "champion")))
    model = load_sklearn_model(template)  # the reviewed skops loader: the champion is ours
    artifact = _foreign.write_artifact(template, folder / "model", model, str(marker))
    shutil.rmtree(folder / "champion")
    created = registry.call(
        "register the foreign model",
        lambda c: c.create_model_version(model_name, source=artifact.as_uri(), tags={CHAOS_TAG: FOREIGN_MODEL}),
        wait=True,
    )
    foreign = str(created.version)
    for key, value in champion.tags.items():
        if key not in _NOT_CLAIMED and key != CHAOS_TAG:
            registry.set_tag(foreign, key, value)
    _make_champion(registry, foreign, previous=champion.version)
    detail = {"foreign": foreign, "champion": champion.version, "previous": previous, "folder": str(folder)}
    at = ledger.record(configuration, "fault", fault="promote_foreign_model", detail={"model": model_name, **detail})
    reloaded = _reload(server_url) if server_url else None
    logger.info("promoted foreign model %s v%s (%s) over v%s", model_name, foreign, artifact, champion.version)
    return {**detail, "marker": str(marker), "source": artifact.as_uri(), "server_reloaded": reloaded, "at": at}


def remove_foreign_model(
    tracking_uri: str,
    model_name: str,
    server_url: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Undo promote_foreign_model: aliases back where they were, the foreign version and its folder deleted.

    The aliases are given back only where they still name the foreign version (a healer
    that already rolled back keeps its champion). Needs the fault ledger.
    """
    detail = ledger.last_fault(configuration, "promote_foreign_model")
    if detail is None:
        return {"restored": False, "detail": "no foreign model was promoted in this run"}
    registry = _store.registry(tracking_uri, model_name)
    foreign, undone = detail["foreign"], []
    if _version(registry.by_alias(CHAMPION)) == foreign:
        registry.set_alias(CHAMPION, detail["champion"])
        undone.append(f"champion back to v{detail['champion']}")
    if _version(registry.by_alias(PREVIOUS)) in (foreign, detail["champion"]):
        if detail.get("previous"):
            registry.set_alias(PREVIOUS, detail["previous"])
        else:
            registry.delete_alias(PREVIOUS)
        undone.append(f"previous back to {detail.get('previous') or 'none'}")
    if registry.by_version(foreign) is not None:
        registry.delete_version(foreign)
        undone.append(f"v{foreign} deleted")
    shutil.rmtree(detail["folder"], ignore_errors=True)
    outcome = {"restored": True, "detail": "; ".join([*undone, f"{detail['folder']} removed"])}
    return _restored(outcome, "remove_foreign_model", server_url, configuration)


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
