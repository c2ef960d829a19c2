"""deployments/argocd: the Argo CD Application, checked offline against Argo CD's API models.

argocd-python-client is generated from Argo CD's OpenAPI document; its models name every
field of an Application and its type. The client's own deserializer checks the types but
keeps unknown keys, so every key is first walked against the models here: a misspelt
``selfHeal`` is an error, as the API server's schema would make it. The models are Argo CD
2.1's (argocd-python-client 1.0.2, 2021) and have gaps (``syncPolicy.retry.limit`` is
missing, ``backoff.factor`` typed as a string): the Application keeps to fields they model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.deployments.conftest import DEPLOYMENTS

APPLICATION = DEPLOYMENTS / "argocd" / "application.yaml"


def _unknown_keys(data: Any, model: Any, path: str) -> list[str]:
    """The keys of ``data`` that are not fields of ``model`` (an argocd_python_client model class), recursively."""
    if not isinstance(data, dict) or not hasattr(model, "attribute_map"):
        return []
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{path}.{key}: not a field of {model.__name__}")
            continue
        kind = model.openapi_types[fields[key]][0]
        if isinstance(kind, list):  # [Model]: each item
            found += [e for i, item in enumerate(value) for e in _unknown_keys(item, kind[0], f"{path}.{key}[{i}]")]
        else:
            found += _unknown_keys(value, kind, f"{path}.{key}")
    return found


def _check(application: dict[str, Any]) -> list[str]:
    """What Argo CD's API would refuse in ``application``: unknown fields, then wrong types (the client's check)."""
    from argocd_python_client.api_client import ApiClient
    from argocd_python_client.configuration import Configuration
    from argocd_python_client.model.v1alpha1_application import V1alpha1Application

    # apiVersion and kind (TypeMeta) are not in the models: the test below holds them.
    body = {k: v for k, v in application.items() if k not in ("apiVersion", "kind")}
    errors = _unknown_keys(body, V1alpha1Application, "Application")
    if errors:
        return errors

    class _Response:
        data = json.dumps(body)

    try:
        ApiClient(Configuration()).deserialize(_Response(), (V1alpha1Application,), True)
    except Exception as exc:  # noqa: BLE001 - the client raises ApiTypeError / ApiValueError and kin
        return [f"{type(exc).__name__}: {exc}"]
    return []


def _application() -> dict[str, Any]:
    return dict(yaml.safe_load(APPLICATION.read_text()))


def test_the_application_is_valid_for_argo_cd() -> None:
    assert _check(_application()) == []


def test_it_syncs_the_production_overlay_automatically_with_prune_and_self_heal() -> None:
    app = _application()
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert (DEPLOYMENTS.parent / app["spec"]["source"]["path"] / "kustomization.yaml").exists()
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


@pytest.mark.parametrize(
    ("where", "change", "error"),
    [
        (("spec", "syncPolicy", "automated"), {"selfHeel": True}, "selfHeel: not a field"),
        (("spec", "syncPolicy", "automated"), {"selfHeal": "yes"}, "self_heal"),
        (("spec", "source"), {"repoUrl": "https://x"}, "repoUrl: not a field"),
    ],
    ids=["misspelt-field", "wrong-type", "wrong-case"],
)
def test_the_check_refuses_what_argo_cd_would(where: tuple[str, ...], change: dict[str, Any], error: str) -> None:
    app = _application()
    node = app
    for key in where:
        node = node[key]
    node.update(change)
    errors = _check(app)
    assert errors and error in " ".join(errors), errors
