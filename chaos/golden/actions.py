"""Served-model faults: the champion's artifact replaced on disk behind the registry's back, and its undo.

The fault is real and quiet: a model fitted on the lake's silver rows with the correct
labels (a plausible model, not a broken one: every health check, the live quality and
the input checks stay green) is written over the champion's ``model.skops`` in the
registry's artifact store, and the server's replicas reload it one at a time (SIGHUP to
each gunicorn master: new workers load the champion again while the old ones finish
their requests, so no request fails). The server's local model cache is cleared of the
champion first, so the reload reads the replaced file, as a server on a new host would.
The registry still names the same version with the same run: only the golden probe
(the champion's frozen set, replayed against ``/predict``) can tell.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import shutil
import signal
import urllib.parse
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.data.actions import land_batches
from chaos.registry import _store
from chaos.registry.actions import _champion, _fit_inverted, _make_champion, _version
from chaos.serving import _server
from chaos.workload import feature_names
from checkpoints import Lake
from checkpoints.exceptions import ServingUnavailable
from checkpoints.golden import golden_set
from serving import processes
from serving.client import ServingClient
from serving.model_cache import ModelCache
from serving.registry import CHAMPION, PREVIOUS

__all__ = ["ensure_rollback_target", "restore_served_model", "swap_served_model"]

logger = logging.getLogger(__name__)

#: The fault's name in the ledger.
FAULT = "swap_served_model"
#: How long a replica may take to replace its workers after SIGHUP.
_RELOAD_SECONDS = 60.0


def _model_file(source: str) -> Path:
    """The ``model.skops`` of a version whose artifacts are a local folder (``file://`` or a path)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise ActivityFailed(f"the champion's artifacts are at {source}: only a local artifact store can be swapped")
    return Path(urllib.parse.unquote(parsed.path)) / "model.skops"


def _fit_other(lake_root: str, silver_table: str, target: str, features: list[str], seed: int) -> bytes:
    """A model of the same features fitted on silver's correct labels (not the champion), as skops bytes."""
    import skops.io  # why local: skops imports all of scikit-learn, and discovery imports every activity module

    frame = Lake(lake_root).read(silver_table, columns=[*features, target]).to_pandas()
    frame = frame.dropna(subset=[target])
    data: bytes = skops.io.dumps(_fit_inverted(frame, features, target, seed, flip=0.0))
    return data


def _reload_master(master: int) -> list[int]:
    """SIGHUP one gunicorn master; wait until it runs only workers started after it; their pids."""
    old = set(processes.children(master))
    processes.kill([master], signal.SIGHUP, timeout=0)

    def replaced() -> list[int]:
        now = set(processes.children(master))
        return sorted(now) if now and not now & old else []

    return processes.wait_until(replaced, _RELOAD_SECONDS, f"master {master}'s workers to reload")


def _wait_serving(url: str, version: str, answers: int = 8) -> None:
    """Wait until ``answers`` answers of ``/ready`` in a row, each on a new connection, come from ``version``.

    A champion promoted a moment before may still be loading in a worker: replacing its file
    then races that load, which can put the original back in the cache the fault drops.
    """
    seen, in_a_row = "no answer", 0

    def serving() -> bool:
        nonlocal seen, in_a_row
        try:
            with ServingClient(url) as server:
                seen = str(server.ready(2.0).get("model_version"))
        except ServingUnavailable as exc:
            seen = str(exc)
        in_a_row = in_a_row + 1 if seen == version else 0
        return in_a_row >= answers

    try:
        processes.wait_until(serving, _RELOAD_SECONDS, f"the server to serve v{version}", interval=0.1)
    except TimeoutError:
        raise ActivityFailed(f"the server at {url} does not serve v{version}: last seen {seen}") from None


def _reload_replicas(url: str, pid_file: str | None) -> list[int]:
    """SIGHUP every gunicorn master of the server, one at a time, until each runs only new workers; the new pids."""
    server = _server.find_server(url, pid_file)
    masters = server.masters or (server.master,)
    started: list[int] = []
    for master in masters:
        started += _reload_master(master)
    processes.wait_until(lambda: _server.ready(url, timeout=2.0)[0], _RELOAD_SECONDS, "the server to answer /ready")
    return started


def ensure_rollback_target(
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    landing_path: str,
    config_path: str | None = None,
    timeout: float = 120.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Make sure ``@previous`` has a golden set (a version the pipeline promoted), landing a clean batch if not.

    Not a fault: the repair of a swapped model is a rollback, which must be able to prove
    itself on the version it rolls back to. In the whole suite the data experiments'
    batches leave such a version; run alone, this lands one clean batch and waits for
    the pipeline's promotion of it (the old champion, whose set the sandbox froze, becomes
    ``@previous``). Returns the version and whether a batch was landed.
    """
    registry, lake = _store.registry(tracking_uri, model_name), Lake(lake_root)

    def with_golden_set() -> str | None:
        previous = registry.by_alias(PREVIOUS)
        return previous.version if previous and golden_set(lake, previous.version, previous.run_id or "") else None

    found = with_golden_set()
    if found is not None:
        return {"previous": found, "landed": []}
    landed = land_batches(landing_path, config_path=config_path)["paths"]
    found = processes.wait_until(with_golden_set, timeout, "a promotion leaving @previous with a golden set", 1.0)
    logger.info("landed %s: the pipeline promoted it, @previous is v%s", landed, found)
    return {"previous": found, "landed": landed}


def swap_served_model(
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    target: str,
    server_url: str,
    model_cache_dir: str,
    backup_dir: str,
    pid_file: str | None = None,
    silver_table: str = "silver",
    seed: int = 7,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Replace the champion's ``model.skops`` with another model's and make the server load it.

    The original file is kept in ``backup_dir`` for ``restore_served_model``. The fault is
    recorded once the server's workers run the replaced file. Returns the version and paths.
    """
    registry = _store.registry(tracking_uri, model_name)
    champion = _champion(registry)
    previous = _version(registry.by_alias(PREVIOUS))
    model_file = _model_file(registry.source(champion))
    if not model_file.is_file():
        raise ActivityFailed(f"v{champion.version} has no model file at {model_file}")
    _wait_serving(server_url, str(champion.version))  # the fault is on the model the server serves
    features = feature_names(server_url)
    if not features:
        raise ActivityFailed(f"the server at {server_url} names no features")
    other = processes.run_yielding(
        lambda: _fit_other(lake_root, silver_table, target, features, seed)
    )  # nice 19: built elsewhere on a real system
    backup = Path(backup_dir) / f"{model_name}-v{champion.version}-model.skops"
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, backup)
    model_file.write_bytes(other)
    ModelCache(model_cache_dir, model_name).drop(champion.version)
    workers = _reload_replicas(server_url, pid_file)
    at = ledger.record(
        configuration,
        "fault",
        fault=FAULT,
        detail={
            "version": champion.version,
            "previous": previous,
            "model_file": str(model_file),
            "backup": str(backup),
        },
    )
    logger.info("v%s's model file replaced on disk; the server's workers %s run it", champion.version, workers)
    return {"version": champion.version, "model_file": str(model_file), "backup": str(backup), "at": at}


def restore_served_model(
    tracking_uri: str,
    model_name: str,
    server_url: str,
    model_cache_dir: str,
    pid_file: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Undo swap_served_model: the original file back, the aliases as they were, the server's workers reloaded.

    The aliases a rollback moved are given back (the swapped version is a good model again
    once its file is), so the next experiment starts from the world this one found.
    """
    fault = ledger.last_fault(configuration, FAULT)
    if fault is None:
        return {"restored": False, "detail": "no model file was swapped in this run"}
    version = str(fault["version"])
    shutil.copyfile(fault["backup"], fault["model_file"])
    ModelCache(model_cache_dir, model_name).drop(version)
    registry = _store.registry(tracking_uri, model_name)
    moved = _version(registry.by_alias(CHAMPION)) != version
    if moved:
        _make_champion(registry, version, previous=fault.get("previous"))
    workers = _reload_replicas(server_url, pid_file)
    outcome = {
        "restored": True,
        "detail": f"v{version}'s model file restored{' and made champion again' if moved else ''}; "
        f"workers {workers} reloaded",
    }
    ledger.record(configuration, "restore", fault=FAULT, detail=outcome)
    return outcome
