"""Cold start: no MLflow on the serving path, a start-up profile, and a restart that does not wait for the store.

Real servers (``python -m serving``, 1 worker) on the session's real MLflow SQLite store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serving import processes
from serving.model_cache import ModelCache
from serving.modelio import load_input_example, read_mlmodel
from serving.registry import ModelRegistry
from serving.schema import FeatureSchema
from tests.serving.conftest import MODEL, ModelStore, http, start_server


def test_the_server_imports_no_mlflow_nor_prefect() -> None:
    """What gunicorn's master imports (the app and its preloaded modules) holds no MLflow, Prefect or redis."""
    code = (
        "import sys, serving.app, serving.server as s; s._import_heavy_modules(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect', 'flows', 'redis')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_profile_knows_when_the_process_started() -> None:
    """The start-up profile's clock starts at the exec, not up to 1 s before (psutil's boot time is whole seconds)."""
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "from serving import startup; print(startup.process_start())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = time.time()
    started = float(out)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - tick <= started <= after, (started - before, after - before)


def test_a_cold_server_is_ready_with_the_champion_and_profiles_its_start(
    model_store: ModelStore, tmp_path: Path
) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"], previous=model_store.versions["lr"])
    argv = [sys.executable, "-m", "serving", "--log-level", "info", "--profile-startup"]
    server = start_server(model_store, tmp_path, workers=1, argv=argv)
    try:
        ready = http.get(f"{server.url}/ready").json()
        assert ready["model_version"] == model_store.versions["hgb"], ready
        log = server.log.read_text()
        assert "start-up profile: worker" in log, server.tail()
        for phase in ("import scikit-learn + skops", "registry read", "artifact fetch", "artifact load", "warm-up"):
            assert phase in log, f"{phase!r} missing from the profile:\n{server.tail()}"
        assert "mlflow" not in {line.split()[-1] for line in log.splitlines() if "import" in line}
    finally:
        server.stop()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _locked_start(store: ModelStore, tmp_path: Path, cache: Path) -> Any:
    """Start a server while the store is locked (the chaos action a real outage looks like); the server."""
    from chaos.registry.actions import make_tracking_store_unreachable, restore_tracking_store

    locked = make_tracking_store_unreachable(store.tracking_uri, duration=120)
    try:
        return start_server(
            store,
            _folder(tmp_path / "locked"),
            workers=1,
            model_cache_dir=cache,
            registry_read_seconds=1,
            lake_root=None,
        )
    finally:
        restore_tracking_store(store.tracking_uri)
        processes.wait_gone([locked["pid"]], 10)


def test_a_restart_serves_the_cached_champion_while_the_store_is_locked(
    model_store: ModelStore, tmp_path: Path
) -> None:
    """Without the cache a server started while the store is locked has no model (it fails the ready wait)."""
    model_store.set_aliases(champion=model_store.versions["lr"], previous=model_store.versions["hgb"])
    cache = tmp_path / "cache"
    first = start_server(model_store, _folder(tmp_path / "first"), workers=1, model_cache_dir=cache, lake_root=None)
    first.stop()
    kept = json.loads((cache / MODEL / "aliases.json").read_text())
    assert kept["champion"]["version"] == model_store.versions["lr"]
    server = _locked_start(model_store, tmp_path, cache)
    try:
        ready = http.get(f"{server.url}/ready").json()
        assert (ready["model_version"], ready["fallback_version"]) == (
            model_store.versions["lr"],
            model_store.versions["hgb"],
        )
        assert "serving the cached @champion" in server.log.read_text()
    finally:
        server.stop()


def test_a_cached_copy_that_fails_its_digest_or_its_root_is_not_served(model_store: ModelStore, tmp_path: Path) -> None:
    """The cache hands out a copy only while its files match their digests and its source is under the root."""
    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri)
    ref = registry.version(model_store.versions["lr"])
    source = registry.source(ref)
    cache = ModelCache(tmp_path / "cache", MODEL)
    downloaded = registry.download(ref, into=str(_folder(tmp_path / "download")))
    cache.put(ref, downloaded, source)
    root = str(model_store.root / "artifacts")
    path = cache.get(ref, root)
    assert (
        path is not None
        and (Path(path) / "model.skops").read_bytes() == (Path(downloaded) / "model.skops").read_bytes()
    )
    assert cache.get(ref, str(tmp_path / "elsewhere")) is None  # the root check applies to the copy too
    skops = Path(path) / "model.skops"
    skops.write_bytes(skops.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    assert cache.get(ref, root) is None


def test_the_mlflow_free_reading_of_a_model_folder_matches_mlflow(model_store: ModelStore, tmp_path: Path) -> None:
    """Signature and input example read from MLmodel as YAML/JSON equal what MLflow's ``Model`` parses."""
    from mlflow.models import Model

    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri)
    for label in ("hgb", "lr"):
        path = registry.download(registry.version(model_store.versions[label]), into=str(_folder(tmp_path / label)))
        meta = Model.load(path)
        data = read_mlmodel(path)
        assert FeatureSchema.from_mlmodel(data).columns == FeatureSchema.from_signature(meta.signature).columns
        theirs, ours = meta.load_input_example(path), load_input_example(path, data)
        assert list(ours.columns) == list(theirs.columns)
        assert ours.astype(object).where(ours.notna(), None).values.tolist() == (
            theirs.astype(object).where(theirs.notna(), None).values.tolist()
        )


def _predict(server: Any, records: list[dict[str, Any]]) -> list[Any]:
    answer = http.post(f"{server.url}/predict", json=records)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [body["predictions"], body["scores"]]


def test_a_restart_starts_from_the_compiled_form_without_scikit_learn(model_store: ModelStore, tmp_path: Path) -> None:
    """The second start reads the champion's verified compiled form from the cache: ready before any
    scikit-learn import, the same answers, and the scikit-learn model loaded after (for big batches)."""
    hgb = model_store.versions["hgb"]
    model_store.set_aliases(champion=hgb, previous=None)
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "serving", "--log-level", "info", "--profile-startup"]
    records = model_store.records(60)
    first = start_server(model_store, _folder(tmp_path / "first"), workers=1, argv=argv, model_cache_dir=cache)
    try:
        assert "(scikit-learn imported)" in first.log.read_text(), first.tail()
        small, big = _predict(first, records[:5]), _predict(first, records)
    finally:
        first.stop()
    assert (cache / MODEL / hgb / "compiled.npz").is_file()
    second = start_server(model_store, _folder(tmp_path / "second"), workers=1, argv=argv, model_cache_dir=cache)
    try:
        log = second.log.read_text()
        assert "(scikit-learn not imported)" in log and "compiled model load" in log, second.tail()
        assert f"v{hgb}: started from its cached compiled form" in log
        assert _predict(second, records[:5]) == small and _predict(second, records) == big
        loaded = f"v{hgb}: scikit-learn model loaded"
        processes.wait_until(lambda: loaded in second.log.read_text(), 60, "the scikit-learn model loaded")
        assert _predict(second, records[:5]) == small and _predict(second, records) == big
        # The loaded model was compiled and verified again, as at a first load.
        assert f"v{hgb}: preprocessing compiled, trees compiled" in second.log.read_text()
    finally:
        second.stop()


def test_a_compiled_form_that_fails_its_digest_is_not_used(model_store: ModelStore, tmp_path: Path) -> None:
    """One changed byte in ``compiled.npz``: the cache hands it out no more, and the model loads as before."""
    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri)
    ref = registry.version(model_store.versions["hgb"])
    cache = ModelCache(tmp_path / "cache", MODEL)
    from serving.model import LoadedModel

    first = LoadedModel.load(registry, ref, cache=cache)
    first.close()
    root = str(model_store.root / "artifacts")
    data = cache.get_compiled(ref, root)
    assert data is not None and cache.get_compiled(ref, str(tmp_path / "elsewhere")) is None
    stored = tmp_path / "cache" / MODEL / ref.version / "compiled.npz"
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert cache.get_compiled(ref, root) is None
    again = LoadedModel.load(registry, ref, cache=cache)
    try:
        assert again._model is not None  # loaded from the skops copy, as without a compiled form
    finally:
        again.close()


def test_a_compiled_form_from_another_scikit_learn_or_trust_list_is_not_used(
    model_store: ModelStore, tmp_path: Path
) -> None:
    """Made under another scikit-learn: the full load runs (and replaces it); types no longer trusted: refused."""
    from serving.compiled import CompiledModel
    from serving.model import LoadedModel, _check_provenance

    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri)
    ref = registry.version(model_store.versions["hgb"])
    cache = ModelCache(tmp_path / "cache", MODEL)
    LoadedModel.load(registry, ref, cache=cache).close()
    root = str(model_store.root / "artifacts")
    data = cache.get_compiled(ref, root)
    assert data is not None
    current = CompiledModel.from_bytes(data)
    assert current.reviewed_types and "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in (
        current.reviewed_types
    )
    _check_provenance(current, ())
    with pytest.raises(ValueError, match="no longer trusted"):
        _check_provenance(CompiledModel(current.plan, current.trees, current.sklearn_version, ["evil.Type"]), ())
    old = CompiledModel(current.plan, current.trees, "0.1", current.reviewed_types).to_bytes()
    cache.put_compiled(ref, old)
    assert cache.get_compiled(ref, root) == old
    again = LoadedModel.load(registry, ref, cache=cache)
    try:
        assert again._model is not None  # the full load, not the stale form
    finally:
        again.close()
    assert cache.get_compiled(ref, root) == data  # and the stale form replaced


def test_the_supervisor_preloads_scikit_learn_unless_every_remembered_version_is_compiled(
    model_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.model import LoadedModel
    from serving.server import _starts_compiled

    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri)
    hgb, lr = (registry.version(model_store.versions[label]) for label in ("hgb", "lr"))
    cache = ModelCache(tmp_path / "cache", MODEL)
    for ref in (hgb, lr):
        LoadedModel.load(registry, ref, cache=cache).close()
    monkeypatch.setenv("SELFHEAL_MODEL_NAME", MODEL)
    monkeypatch.setenv("SELFHEAL_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    assert not _starts_compiled()  # nothing remembered yet
    cache.remember({"champion": hgb})
    assert _starts_compiled()
    cache.remember({"champion": hgb, "previous": lr})  # logistic regression: no compiled form
    assert not _starts_compiled()
    monkeypatch.delenv("SELFHEAL_MODEL_CACHE_DIR")
    cache.remember({"champion": hgb})
    assert not _starts_compiled()  # no cache configured
