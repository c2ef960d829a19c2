"""Models only from the registry's own store, only as skops with reviewed types (issue 15).

Through the server's real loader (``ModelWatcher`` -> ``LoadedModel.load`` -> ``ModelRegistry.download``)
against a real MLflow SQLite store: a version whose artifact lives outside the artifact root, or is
pickled, is refused with its reason, its code never runs, and the champion keeps serving.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.model import LoadedModel
from serving.modelio import public_sklearn_estimator
from serving.registry import ModelRefused, ModelRegistry
from serving.reload import ControlFile, ModelWatcher, WatchPolicy
from tests.serving._estimators import TRUSTED
from tests.serving.conftest import GUARDED, MODEL, GuardedVersions, ModelStore

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def test_one_type_at_a_time_accepts_exactly_the_estimators_skops_trusts_by_default() -> None:
    """Over every class scikit-learn defines: accepted by ``public_sklearn_estimator`` iff on skops' own list."""
    from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES  # the full import walked all of sklearn

    skops_list = set(SKLEARN_ESTIMATOR_TYPE_NAMES)
    defined = {
        f"{name}.{cls.__name__}"
        for name, module in list(sys.modules.items())
        if name.startswith("sklearn.") and module is not None
        for cls in vars(module).values()
        if isinstance(cls, type) and cls.__module__ == name
    }
    assert len(skops_list) > 150 and skops_list <= defined
    assert {name for name in defined if public_sklearn_estimator(name)} == skops_list
    for outside in ("builtins.eval", "os.system", "sklearnx.Pipeline", "sklearn", "sklearn.pipeline.NoSuchThing"):
        assert not public_sklearn_estimator(outside)


def test_a_lean_skops_import_walks_nothing_and_trusts_nothing_more(tmp_path: Path) -> None:
    """In a fresh process, as the server imports it: no module of scikit-learn beyond what loading needs,
    a pipeline of public estimators still loads, and a type nobody reviewed is still refused."""
    script = """
import sys
from serving.modelio import UnsafeArtifact, import_skops_lean, loads_sklearn_model
import_skops_lean()
import skops.io
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
assert SKLEARN_ESTIMATOR_TYPE_NAMES == [], "the walk ran"
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
model = make_pipeline(StandardScaler(), LogisticRegression()).fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
assert loads_sklearn_model(skops.io.dumps(model)).predict([[3.0]]).tolist() == [1]
assert not {"sklearn.gaussian_process", "sklearn.semi_supervised"} & set(sys.modules), "walked"
from tests.serving._estimators import FailSwitchClassifier
try:
    loads_sklearn_model(skops.io.dumps(FailSwitchClassifier()))
except UnsafeArtifact as exc:
    assert exc.reason == "untrusted_types" and "FailSwitchClassifier" in str(exc), exc
else:
    raise AssertionError("an unreviewed type loaded")
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_logging_a_model_with_pickle_forbidden_prints_no_serving_input_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's check of the input example loads the model with its own loader, which refuses in every
    selfheal process: that refusal must not print as "Failed to validate serving input example ... Got
    error" on every training run, and the version must still be logged with its example."""
    import logging

    import mlflow
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from serving.modelio import log_sklearn_model, mlflow_uris
    from serving.settings import PICKLE_SWITCH

    monkeypatch.setenv(PICKLE_SWITCH, "false")
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: ["scikit-learn"])
    X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    mlflow_logger = logging.getLogger("mlflow.models.model")  # MLflow's loggers do not propagate to caplog's
    mlflow_logger.addHandler(handler)
    try:
        with mlflow_uris(f"sqlite:///{tmp_path / 'mlflow.db'}"):
            # Artifacts under tmp_path: the default experiment would write ./mlruns in the checkout.
            experiment = mlflow.create_experiment("quiet", artifact_location=str(tmp_path / "artifacts"))
            with mlflow.start_run(experiment_id=experiment):
                info = log_sklearn_model(model, X.head(2), registered_model_name="quiet")
    finally:
        mlflow_logger.removeHandler(handler)
    assert info.registered_model_version == 1
    assert info.saved_input_example_info is not None
    assert not [r.getMessage() for r in records if "serving input example" in r.getMessage()]
