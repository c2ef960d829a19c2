"""How a worker follows the registry: what makes it swap the model set it serves."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from serving.registry import RELEASE_TAG, ModelRegistry
from serving.release import ReleaseState
from serving.reload import ControlFile, ModelSet, ModelWatcher, WatchPolicy
from tests.serving.conftest import GUARDED, GuardedVersions, ModelStore


def test_a_release_measurement_does_not_swap_the_set_a_new_share_does(
    guarded_versions: GuardedVersions, model_store: ModelStore
) -> None:
    name = "clf-release-swaps"
    client = model_store.client()
    source = client.get_model_version_download_uri(GUARDED, guarded_versions.good)
    client.create_registered_model(name)
    champion, challenger = (str(client.create_model_version(name, source=source).version) for _ in range(2))
    client.set_registered_model_alias(name, "champion", champion)
    assert Path(unquote(urlparse(source).path)).is_relative_to(guarded_versions.root)
    registry = ModelRegistry(name, tracking_uri=model_store.tracking_uri, artifact_root=str(guarded_versions.root))
    swaps: list[ModelSet] = []
    watcher = ModelWatcher(registry, ControlFile(None), WatchPolicy(), on_swap=lambda old, new: swaps.append(new))
    state = ReleaseState("r1", "canary", challenger, champion, 0.1)

    registry.set_model_tag(RELEASE_TAG, state.to_tag())
    watcher.refresh()
    assert len(swaps) == 1 and watcher.models.routing is not None and watcher.models.routing.share == 0.1

    measured = state.evolve(measurements=4, counts={"quality": [3, 0, 1]}, detail="2 of 3 measurements")
    registry.set_model_tag(RELEASE_TAG, measured.to_tag())
    assert not watcher.refresh().changed and len(swaps) == 1

    registry.set_model_tag(RELEASE_TAG, measured.evolve(share=0.5, step=1).to_tag())
    assert watcher.refresh().changed and len(swaps) == 2
    assert watcher.models.routing is not None and watcher.models.routing.share == 0.5
