"""deployments/k8s and the k8s work pool's job template, validated against the Kubernetes API schemas offline.

`kubectl kustomize` builds the manifests without a cluster; kubernetes-validate carries
the API server's OpenAPI schemas in its package and checks every object strictly
(unknown fields are errors). Only the last test needs a cluster, and skips without one.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deployments.conftest import DEPLOYMENTS

K8S = DEPLOYMENTS / "k8s"
BUILDS = ["base", "overlays/local", "overlays/production"]
KUBERNETES = kubernetes_validate.latest_version()
SERVING_POD_LABELS = {"app.kubernetes.io/name": "selfheal-serving", "app.kubernetes.io/part-of": "selfheal"}


@cache
def build(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize` (make deps installs it)"
    done = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(target: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in build(target) if o["kind"] == kind}


@pytest.mark.parametrize("target", BUILDS)
def test_every_object_validates_strictly_against_the_api_schemas(target: str) -> None:
    docs = build(target)
    kinds = sorted({d["kind"] for d in docs})
    # Production keeps its data in PostgreSQL and object storage, its Secret outside the manifests.
    outside = {"PersistentVolumeClaim", "Secret"} if target == "overlays/production" else set()
    assert kinds == sorted(
        {
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
        }
        - outside
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        assert doc["metadata"].get("namespace", "selfheal") == "selfheal"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "selfheal"


def test_the_validator_refuses_a_broken_object_offline() -> None:
    serving = copy.deepcopy(objects("base", "Deployment")["selfheal-serving"])
    serving["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(serving, KUBERNETES, strict=True)
    serving = copy.deepcopy(objects("base", "Deployment")["selfheal-serving"])
    serving["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(serving, KUBERNETES, strict=True)


@pytest.mark.parametrize("target", BUILDS)
def test_serving_stays_up_through_pod_loss(target: str) -> None:
    serving = objects(target, "Deployment")["selfheal-serving"]
    spec = serving["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert set(container["resources"]) == {"requests", "limits"}
    assert {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e} == {"selfheal-serving-env"}
    assert {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e} == {"selfheal-secrets"}
    selector = spec["selector"]["matchLabels"]

    pdb = objects(target, "PodDisruptionBudget")["selfheal-serving"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["minAvailable"] >= 1
    hpa = objects(target, "HorizontalPodAutoscaler")["selfheal-serving"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "selfheal-serving"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    service = objects(target, "Service")["selfheal-serving"]["spec"]
    assert service["selector"] == selector and service["ports"][0]["port"] == 8765


def test_the_chaos_suite_finds_the_serving_pods_and_nothing_else() -> None:
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in objects("base", "Deployment").items()}
    assert SERVING_POD_LABELS.items() <= pods["selfheal-serving"].items()
    others = [
        name
        for name, labels in pods.items()
        if name != "selfheal-serving" and SERVING_POD_LABELS.items() <= labels.items()
    ]
    assert others == []


def test_tracking_server_worker_and_config_are_there() -> None:
    deployments = objects("overlays/local", "Deployment")
    mlflow = deployments["selfheal-mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["command"] == ["mlflow", "server"] and "--port=5000" in mlflow["args"]
    assert objects("overlays/local", "Service")["selfheal-mlflow"]["spec"]["ports"][0]["port"] == 5000
    worker = deployments["selfheal-prefect-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["args"][:4] == ["--pool", "k8s", "--type", "kubernetes"]
    assert worker["serviceAccountName"] == "selfheal-prefect-worker"
    configs = objects("overlays/local", "ConfigMap")
    flows_config = yaml.safe_load(configs["selfheal-config"]["data"]["selfheal.yaml"])
    assert flows_config["tracking_uri"] == "http://selfheal-mlflow:5000"
    assert configs["selfheal-prefect"]["data"]["PREFECT_API_URL"].endswith("/api")
    assert set(objects("overlays/local", "Secret")["selfheal-secrets"]["data"]) >= {"SELFHEAL_ADMIN_TOKEN"}
    assert all(
        c["imagePullPolicy"] == "Never" and c["image"] == "selfheal:dev"
        for d in deployments.values()
        for c in d["spec"]["template"]["spec"]["containers"]
    )


def _job(**variables: Any) -> dict[str, Any]:
    """The k8s work pool's Job for one flow run, rendered as the worker does, with ``variables`` over the defaults."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((DEPLOYMENTS / "work-pools" / "k8s.json").read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values = {**defaults, **variables}
    configuration = KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], values))
    configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4()))
    job = configuration.job_manifest
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    return job


def test_the_work_pool_template_renders_a_valid_job() -> None:
    job = _job()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "SELFHEAL_CONFIG", "value": "/etc/selfheal/selfheal.yaml"} in container["env"]
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == "selfheal-config"
    assert pod["serviceAccountName"] == "selfheal-flow-runner"
    # The names the template refers to exist in the manifests.
    assert "selfheal-config" in objects("base", "ConfigMap")
    assert "selfheal-data" in objects("base", "PersistentVolumeClaim")
    assert "selfheal-flow-runner" in objects("base", "ServiceAccount")


def test_production_needs_no_shared_volume_and_keeps_its_stores_outside() -> None:
    deployments = objects("overlays/production", "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        claims = [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
        assert claims == [], f"{name} still mounts {claims}"
    mlflow = deployments["selfheal-mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["spec"]["replicas"] >= 2 and mlflow["spec"]["strategy"]["type"] == "RollingUpdate"
    # The backend store (a PostgreSQL URI with its password) comes from the Secret, never the args.
    assert not any(a.startswith("--backend-store-uri") for a in container["args"])
    assert {"secretRef": {"name": "selfheal-secrets"}} in container["envFrom"]
    assert "--default-artifact-root=s3://selfheal/artifacts" in container["args"]
    assert "--no-serve-artifacts" in container["args"]
    configs = objects("overlays/production", "ConfigMap")
    flows_config = yaml.safe_load(configs["selfheal-config"]["data"]["selfheal.yaml"])
    serving_env = configs["selfheal-serving-env"]["data"]
    assert flows_config["lake"]["root"] == serving_env["SELFHEAL_LAKE_ROOT"] == "s3://selfheal/lake"
    assert flows_config["artifact_root"] == serving_env["SELFHEAL_ARTIFACT_ROOT"] == "s3://selfheal/artifacts"
    assert flows_config["landing"]["path"].startswith("s3://")
    # Flow-run pods: the template's data volume, given as the overlay's comment says, mounts no claim.
    job = _job(data_volume={"name": "data", "emptyDir": {}})
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}} and volumes["config"]["configMap"]


def test_the_production_config_is_a_valid_selfheal_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.config import load_config

    text = objects("overlays/production", "ConfigMap")["selfheal-config"]["data"]["selfheal.yaml"]
    (tmp_path / "selfheal.yaml").write_text(text)
    options = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "aws_conditional_put": "etag"}
    monkeypatch.setenv("SELFHEAL_LAKE__STORAGE_OPTIONS", json.dumps(options))
    cfg = load_config(tmp_path / "selfheal.yaml")
    assert cfg.lake.root == "s3://selfheal/lake" and cfg.lake.storage_options == options


@pytest.mark.k8s
def test_a_cluster_accepts_the_local_overlay() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None or subprocess.run([kubectl, "version", "--request-timeout=3s"], capture_output=True).returncode:
        pytest.skip("needs a Kubernetes API server (kubectl cannot reach one)")
    done = subprocess.run(
        [kubectl, "apply", "--dry-run=server", "-k", str(K8S / "overlays" / "local")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
