"""Models only from the registry's own store, only as skops with reviewed types (issue 15).

Through the server's real loader (``ModelWatcher`` -> ``LoadedModel.load`` -> ``ModelRegistry.download``)
against a real MLflow SQLite store: a version whose artifact lives outside the artifact root, or is
pickled, is refused with its reason, its code never runs, and the champion keeps serving.
"""

from __future__ import annotations

import pytest

from serving.model import LoadedModel
from serving.registry import ModelRefused, ModelRegistry
from serving.reload import ControlFile, ModelWatcher, WatchPolicy
from tests.serving._estimators import TRUSTED
from tests.serving.conftest import GUARDED, MODEL, GuardedVersions, ModelStore


def _watcher(guarded: GuardedVersions, store: ModelStore) -> ModelWatcher:
    registry = ModelRegistry(GUARDED, tracking_uri=store.tracking_uri, artifact_root=str(guarded.root))
    return ModelWatcher(registry, ControlFile(None), WatchPolicy())


def _champion(store: ModelStore, version: str) -> None:
    store.client().set_registered_model_alias(GUARDED, "champion", version)


def test_a_good_skops_version_loads(guarded_versions: GuardedVersions, model_store: ModelStore) -> None:
    _champion(model_store, guarded_versions.good)
    watcher = _watcher(guarded_versions, model_store)
    report = watcher.refresh()
    assert report.primary == guarded_versions.good and not report.errors
    assert watcher.refused is None


@pytest.mark.parametrize(
    ("which", "reason"), [("foreign", "outside_root"), ("pickled", "not_skops")], ids=["outside-root", "pickle-in-root"]
)
def test_a_refused_version_keeps_the_champion_and_never_runs(
    guarded_versions: GuardedVersions, model_store: ModelStore, which: str, reason: str
) -> None:
    _champion(model_store, guarded_versions.good)
    watcher = _watcher(guarded_versions, model_store)
    watcher.refresh()
    bad = getattr(guarded_versions, which)
    _champion(model_store, bad)
    report = watcher.refresh(force=True)
    assert report.primary == guarded_versions.good  # the old champion keeps serving
    assert report.wanted == bad and report.failed
    assert watcher.refused is not None
    assert watcher.refused["version"] == bad and watcher.refused["reason"] == reason
    assert not guarded_versions.marker.exists(), guarded_versions.marker.read_text()


def test_the_artifact_cannot_widen_the_trusted_types(model_store: ModelStore) -> None:
    """``clf`` v4 names its own estimator in its MLmodel's trust list; only config can trust it."""
    registry = ModelRegistry(MODEL, tracking_uri=model_store.tracking_uri, artifact_root=str(model_store.root))
    ref = registry.version(model_store.versions["switch"])
    with pytest.raises(ModelRefused, match=TRUSTED) as refused:
        LoadedModel.load(registry, ref)
    assert refused.value.reason == "untrusted_types"
    assert LoadedModel.load(registry, ref, extra_trusted=[TRUSTED]).version == ref.version


def test_without_an_artifact_root_nothing_loads(guarded_versions: GuardedVersions, model_store: ModelStore) -> None:
    registry = ModelRegistry(GUARDED, tracking_uri=model_store.tracking_uri, artifact_root="")
    with pytest.raises(ModelRefused) as refused:
        LoadedModel.load(registry, registry.version(guarded_versions.good))
    assert refused.value.reason == "outside_root"
