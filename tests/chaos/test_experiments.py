"""Every experiment is valid for Chaos Toolkit and keeps the suite's rules; the Kubernetes ones are validated only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoslib.activity import get_all_activities_in_experiment
from chaoslib.experiment import ensure_experiment_is_valid
from chaoslib.loader import load_experiment

import chaos

EXPERIMENTS = Path(chaos.__file__).parent / "experiments"
LOCAL = sorted(EXPERIMENTS.glob("*.yaml"))
KUBERNETES = sorted((EXPERIMENTS / "k8s").glob("*.yaml"))
#: The production topology's (``selfheal chaos run --profile production``).
PRODUCTION = sorted((EXPERIMENTS / "production").glob("*.yaml"))
LOCAL_NAMES = [
    "approval-held-rollback",
    "batch-output-write-failure",
    "config-drift",
    "data-corrupt-garbage",
    "data-corrupt-nulls",
    "data-corrupt-schema",
    "data-corrupt-truncate",
    "data-drift-concept",
    "data-drift-covariate",
    "data-nested-column",
    "data-non-file-entry",
    "data-partial-write",
    "data-resent-rows",
    "lake-torn-commit",
    "network-cut-serving",
    "network-cut-tracking",
    "network-throttle-serving",
    "pipeline-kill-mid-stage",
    "registry-bad-model",
    "registry-foreign-artifact",
    "registry-tracking-store-down-long",
    "registry-tracking-store-unreachable",
    "release-canary-worse",
    "schema-renamed-column",
    "served-model-mismatch",
    "serving-hang-worker",
    "serving-kill-replica",
    "serving-kill-server",
    "serving-kill-worker",
]
OURS = {(a["mod"], a["name"]) for a in chaos.load_exported_activities()}


def _load(path: Path) -> dict[str, Any]:
    experiment: dict[str, Any] = load_experiment(str(path))
    return experiment


def _activities(experiment: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = list(get_all_activities_in_experiment(experiment))
    found += list(experiment.get("rollbacks", []))
    return found


def test_one_experiment_per_fault() -> None:
    assert [p.stem for p in LOCAL] == LOCAL_NAMES
    assert [p.stem for p in KUBERNETES] == ["network-cut-serving", "network-throttle-serving", "serving-kill-pod"]
    assert [p.stem for p in PRODUCTION] == [
        "topology-object-store-down-long",
        "topology-postgres-restart",
        "topology-worker-kill",
    ]
    assert all("production" in _load(p)["tags"] for p in PRODUCTION)  # chaos.control starts that sandbox
    assert not any("production" in _load(p)["tags"] for p in LOCAL)


@pytest.mark.parametrize("path", LOCAL + KUBERNETES + PRODUCTION, ids=lambda p: p.relative_to(EXPERIMENTS).as_posix())
def test_valid_for_chaos_toolkit(path: Path) -> None:
    ensure_experiment_is_valid(_load(path))


@pytest.mark.parametrize("path", LOCAL + PRODUCTION, ids=lambda p: p.stem)
def test_local_experiments_keep_the_rules(path: Path) -> None:
    import chaos.sla

    experiment = _load(path)
    assert experiment["runtime"]["rollbacks"]["strategy"] == "always"
    assert experiment["rollbacks"], "every fault is undone by a rollback"
    controls = {c["provider"]["module"] for c in experiment["controls"]}
    assert "chaos.control" in controls
    config = experiment["configuration"]
    assert config["selfheal_ledger"]["key"] == "SELFHEAL_CHAOS_LEDGER"
    names = config["mttr_seconds"]["provider"]["arguments"]["names"]
    assert names[0] == path.stem, "the SLA is looked up by the experiment's name first"
    probes = experiment["steady-state-hypothesis"]["probes"]
    tolerances = {p["tolerance"] for p in probes}
    assert "${mttr_tolerance}" in tolerances, "the hypothesis states the MTTR bound"
    assert tolerances <= {"${mttr_tolerance}", "${availability_tolerance}", "${rows_lost_tolerance}"}
    for activity in _activities(experiment):
        provider = activity["provider"]
        key = (provider["module"], provider["func"])
        assert key in OURS, f"{activity['name']}: {key} is not an exported activity"
    for value in config.values():
        if isinstance(value, dict) and value.get("type") == "probe":
            provider = value["provider"]
            assert provider["module"] == "chaos.sla" and provider["func"] in chaos.sla.__all__
    faults = [a for a in experiment["method"] if a["type"] == "action"]
    assert faults, "the method injects a fault"
    if any(p["provider"].get("func") == "seconds_until_pipeline_caught_up" for p in probes):
        # Its recovery is a complete pipeline run with training: 65-75 s in the sandbox on 2 cores.
        assert chaos.sla.DEFAULT_MTTR_SECONDS.get(path.stem, 0) >= 120, "a whole run does not fit the 60 s default"


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.stem)
def test_kubernetes_experiments_reference_real_chaosk8s_activities(path: Path) -> None:
    pytest.importorskip("chaosk8s", reason="chaostoolkit-kubernetes is not installed (pip install -e .[kubernetes])")
    import chaosk8s

    theirs = {(a["mod"], a["name"]) for a in chaosk8s.load_exported_activities()}
    experiment = _load(path)
    assert experiment["runtime"]["rollbacks"]["strategy"] == "always" and experiment["rollbacks"]
    used = {(a["provider"]["module"], a["provider"]["func"]) for a in _activities(experiment)}
    k8s = {u for u in used if u[0].startswith("chaosk8s.")}
    assert k8s and k8s <= theirs
    assert used - k8s <= OURS


def _api_server() -> str | None:
    """Why the Kubernetes experiments cannot run here (None when a cluster answers)."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    done = subprocess.run(["kubectl", "version", "--request-timeout=3s"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"no Kubernetes API server answers ({done.stderr.strip()[:160]})"


@pytest.mark.k8s
@pytest.mark.chaos
@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.stem)
def test_kubernetes_experiments_run_against_a_cluster(path: Path) -> None:
    reason = _api_server()
    if reason:
        pytest.skip(f"validated only: {reason}")
    from chaoslib.experiment import run_experiment

    journal = run_experiment(_load(path), settings={"runtime": {"rollbacks": {"strategy": "always"}}})
    assert journal["status"] == "completed" and not journal["deviated"]


def test_the_yaml_is_plain_yaml() -> None:
    """The files load with any YAML reader (no tags, no anchors that Chaos Toolkit would not see)."""
    for path in LOCAL + KUBERNETES + PRODUCTION:
        assert isinstance(yaml.safe_load(path.read_text()), dict)
