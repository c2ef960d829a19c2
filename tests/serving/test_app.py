"""The app in-process (one worker, its real lifespan): predictions, validation, feedback, probes, admin."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from checkpoints import Lake
from serving.app import create_app
from serving.processes import free_port, wait_until
from serving.routers.predict import PredictFastPath
from serving.settings import ServerSettings
from tests.serving._estimators import TRUSTED
from tests.serving.conftest import ADMIN_TOKEN, GUARDED, MODEL, GuardedVersions, ModelStore

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def settings_for(store: ModelStore, tmp_path: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "tracking_uri": store.tracking_uri,
        "model_name": MODEL,
        "lake_root": str(tmp_path / "lake"),
        "dead_letter_dir": str(tmp_path / "dead-letter"),
        "admin_token": ADMIN_TOKEN,
        "poll_seconds": 3600,
        "log_flush_seconds": 0.2,
        "trusted_types": [TRUSTED],
    }
    values.update(overrides)
    return ServerSettings(**values)


class AppClient(httpx.Client):
    """An httpx client of one app served by uvicorn in a thread of the test process (real lifespan)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(self._started, 60, "the in-process server to start", interval=0.05)
        super().__init__(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def _started(self) -> bool:
        assert self.thread.is_alive(), "in-process server did not start"
        return bool(self.server.started)

    def shutdown(self) -> None:
        self.close()
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture
def make_client(model_store: ModelStore, tmp_path: Path) -> Iterator[Any]:
    clients: list[AppClient] = []

    def make(**overrides: Any) -> AppClient:
        client = AppClient(create_app(settings_for(model_store, tmp_path, **overrides)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown()


def test_predict_one_record_and_a_list(model_store: ModelStore, make_client: Any) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"], previous=model_store.versions["lr"])
    client = make_client()
    one = client.post("/predict", json=model_store.records(1)[0], headers={"X-Request-ID": "req-1"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == model_store.versions["hgb"]
    assert body["served_by"] == "primary"
    assert body["request_id"] == "req-1" == one.headers["x-request-id"]
    assert body["ids"] == ["req-1"]
    assert body["predictions"][0] in (0, 1) and 0.0 <= body["scores"][0] <= 1.0

    many = client.post("/predict", json=model_store.records(5)).json()
    assert len(many["predictions"]) == len(many["scores"]) == 5
    assert many["ids"] == [f"{many['request_id']}:{i}" for i in range(5)]
    mlflow_style = client.post("/predict", json={"dataframe_records": model_store.records(3)})
    assert mlflow_style.status_code == 200 and len(mlflow_style.json()["predictions"]) == 3


def test_predictions_match_the_model_in_process(model_store: ModelStore, make_client: Any, tmp_path: Path) -> None:
    import mlflow.artifacts

    from serving.modelio import load_sklearn_model

    model_store.set_aliases(champion=model_store.versions["hgb"])
    client = make_client()
    answer = client.post("/predict", json=model_store.records(40)).json()
    source = model_store.client().get_model_version_download_uri(MODEL, model_store.versions["hgb"])
    path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "model"))
    model = load_sklearn_model(path)
    frame = model_store.frame.iloc[:40]
    assert answer["predictions"] == model.predict(frame).tolist()
    assert answer["scores"] == pytest.approx(model.predict_proba(frame)[:, 1].tolist())


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"mean_radius": "big"}, ["body", "mean_radius"], "expected a number (double), got string"),
        ({"visits": 2.5}, ["body", "visits"], "expected an integer (long)"),
        ({"segment": 3}, ["body", "segment"], "expected a string"),
        ({"mean_radius": None}, ["body", "mean_radius"], "must not be null"),
        ({"colour": "red"}, ["body", "colour"], "unexpected field"),
    ],
)
def test_a_bad_record_is_a_422_naming_the_field_and_type(
    model_store: ModelStore, make_client: Any, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"])
    client = make_client()
    record = {**model_store.records(1)[0], **change}
    response = client.post("/predict", json=record)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_missing_field_and_bad_bodies(model_store: ModelStore, make_client: Any) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"])
    client = make_client()
    record = model_store.records(2)
    del record[1]["segment"]
    errors = client.post("/predict", json=record).json()["detail"]
    assert errors == [
        {
            "loc": ["body", 1, "segment"],
            "msg": "field required: expected a string",
            "type": "missing",
            "expected": "string",
        }
    ]
    assert client.post("/predict", content=b"{not json").status_code == 422
    assert client.post("/predict", json=[]).status_code == 422
    assert client.post("/predict", json=42).status_code == 422
    assert client.post("/predict", json=model_store.records(1) * 1001).status_code == 422


def test_the_fast_path_answers_predict_as_the_fastapi_route_does(model_store: ModelStore, tmp_path: Path) -> None:
    """``PredictFastPath`` answers ``POST /predict`` in front of FastAPI's router: every answer, errors
    included, is the one the route gives without it (same status, body and headers but the date)."""
    model_store.set_aliases(champion=model_store.versions["hgb"])
    apps = {}
    for name in ("fast", "route"):
        app = create_app(settings_for(model_store, tmp_path / name, max_body_bytes=4096))
        if name == "route":
            app.user_middleware = [m for m in app.user_middleware if m.cls is not PredictFastPath]
        apps[name] = app
    assert [m.cls for m in apps["fast"].user_middleware].count(PredictFastPath) == 1
    clients = {name: AppClient(app) for name, app in apps.items()}
    record = model_store.records(1)[0]
    missing = {k: v for k, v in record.items() if k != "segment"}

    def chunked() -> Iterator[bytes]:
        yield b"[" + b" " * 3000
        yield b" " * 3000 + b"]"

    asks: list[dict[str, Any]] = [
        {"json": record},
        {"json": model_store.records(3), "headers": {"X-Request-ID": "list-1"}},
        {"json": {"dataframe_records": [record]}},
        {"content": b"{not json"},
        {"content": b"\xff\xfe"},
        {"json": [missing]},
        {"json": {**record, "segment": 3}},
        {"json": []},
        {"content": b"x" * 5000},
        {"content": chunked},  # a fresh generator per server: a chunked body over the limit
    ]
    try:
        for i, ask in enumerate(asks):
            headers = {"X-Request-ID": f"same-{i}", **ask.pop("headers", {})}
            answers = {
                name: client.post("/predict", headers=headers, **{k: v() if callable(v) else v for k, v in ask.items()})
                for name, client in clients.items()
            }
            fast, route = answers["fast"], answers["route"]
            assert (fast.status_code, fast.content) == (route.status_code, route.content), (i, fast.text, route.text)
            assert {k: v for k, v in fast.headers.items() if k != "date"} == {
                k: v for k, v in route.headers.items() if k != "date"
            }, i
            assert fast.status_code < 500, (i, fast.text)
        assert clients["fast"].get("/predict").status_code == clients["route"].get("/predict").status_code == 405
    finally:
        for client in clients.values():
            client.shutdown()


def test_inference_log_and_feedback_rows(model_store: ModelStore, make_client: Any, tmp_path: Path) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"])
    client = make_client()
    single = client.post("/predict", json=model_store.records(1)[0]).json()
    batch = client.post("/predict", json=model_store.records(3, start=10)).json()
    feedback = [{"request_id": single["request_id"], "label": 1}, {"request_id": batch["ids"][2], "label": 0.0}]
    assert client.post("/feedback", json=feedback).status_code == 202
    assert client.post("/feedback", json={"request_id": "x", "label": "high"}).status_code == 422
    client.app.state.serving.log.flush()  # type: ignore[attr-defined]

    lake = Lake(tmp_path / "lake")
    log = lake.read("inference_log").to_pandas()
    assert sorted(log["_request_id"]) == sorted([single["request_id"], *batch["ids"]])
    assert set(log["_served_by"]) == {"primary"} and set(log["_model_version"]) == {model_store.versions["hgb"]}
    schema = lake.read("inference_log").schema
    assert str(schema.field("_ts").type) == "timestamp[us, tz=UTC]"
    for name in ("_prediction", "_score", "_latency_ms"):
        assert str(schema.field(name).type) == "double"
    assert str(schema.field("visits").type) == "int64" and str(schema.field("segment").type) == "string"
    row = log.set_index("_request_id").loc[batch["ids"][1]]
    assert row["mean_radius"] == model_store.records(3, start=10)[1]["mean_radius"]
    fb = lake.read("feedback").to_pandas()
    assert sorted(fb["request_id"]) == sorted([single["request_id"], batch["ids"][2]])
    assert str(lake.read("feedback").schema.field("ts").type) == "timestamp[us, tz=UTC]"


def test_probes_and_metrics(model_store: ModelStore, make_client: Any) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"], previous=model_store.versions["lr"])
    client = make_client()
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert ready["model_version"] == model_store.versions["hgb"]
    assert ready["fallback_version"] == model_store.versions["lr"]
    assert ready["breaker"] == "closed"
    client.post("/predict", json=model_store.records(4))
    text = client.get("/metrics").text
    for name in (
        "selfheal_http_request_duration_seconds_bucket",
        'selfheal_predictions_total{served_by="primary"} 4.0',
        "selfheal_breaker_state 0.0",
        f'selfheal_model_version{{role="primary"}} {float(model_store.versions["hgb"])}',
        "selfheal_prediction_score_bucket",
    ):
        assert name in text, name
    schema = client.get("/openapi.json").json()
    assert "mean_radius" in schema["components"]["schemas"]["Record"]["properties"]


def test_not_ready_without_a_champion(model_store: ModelStore, make_client: Any) -> None:
    model_store.set_aliases(champion=None, previous=None)
    client = make_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
    response = client.post("/predict", json=model_store.records(1)[0])
    assert response.status_code == 503 and "no model is loaded" in response.json()["detail"]


def test_admin_needs_the_token_and_is_off_without_one(model_store: ModelStore, make_client: Any) -> None:
    model_store.set_aliases(champion=model_store.versions["hgb"])
    client = make_client()
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}).status_code == 401
    assert client.post("/admin/reload", headers=AUTH).status_code == 200
    disabled = make_client(admin_token=None)
    response = disabled.post("/admin/reload", headers=AUTH)
    assert response.status_code == 404 and "SELFHEAL_ADMIN_TOKEN" in response.json()["detail"]


def test_reload_rollback_and_a_broken_version(model_store: ModelStore, make_client: Any) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    client = make_client()
    record = model_store.records(1)[0]

    model_store.set_aliases(champion=v["broken"], previous=v["hgb"])
    failed = client.post("/admin/reload", headers=AUTH)
    assert failed.status_code == 409
    assert (
        f"version {v['broken']}" in failed.json()["detail"]
        and f"still serving version {v['hgb']}" in failed.json()["detail"]
    )
    assert client.post("/predict", json=record).json()["model_version"] == v["hgb"]
    assert f"version {v['broken']}" in client.get("/ready").json()["last_reload_error"]

    model_store.set_aliases(champion=v["lr"], previous=v["hgb"])
    ok = client.post("/admin/reload", headers=AUTH).json()
    assert ok["model_version"] == v["lr"] and ok["fallback_version"] == v["hgb"]
    assert client.post("/predict", json=record).json()["model_version"] == v["lr"]

    rolled = client.post("/admin/rollback", headers=AUTH).json()
    assert rolled["model_version"] == v["hgb"] and rolled["pinned"]["version"] == v["hgb"]
    assert client.post("/predict", json=record).json()["model_version"] == v["hgb"]
    # The pin holds through polls while the champion is unchanged...
    client.app.state.serving.watcher.refresh()  # type: ignore[attr-defined]
    assert client.post("/predict", json=record).json()["model_version"] == v["hgb"]
    # ...and a newly promoted champion ends it.
    model_store.set_aliases(champion=v["switch"], previous=v["lr"])
    client.app.state.serving.watcher.refresh()  # type: ignore[attr-defined]
    assert client.post("/predict", json=record).json()["model_version"] == v["switch"]
    missing = client.post("/admin/rollback", headers=AUTH, json={"version": "999"})
    assert missing.status_code == 409 and "no version 999" in missing.json()["detail"]


def test_a_foreign_champion_is_refused_and_ready_says_why(
    guarded_versions: GuardedVersions, model_store: ModelStore, make_client: Any
) -> None:
    """The server's own settings (artifact root beside its SQLite store) refuse a version stored elsewhere."""
    client = model_store.client()
    client.set_registered_model_alias(GUARDED, "champion", guarded_versions.good)
    app = make_client(model_name=GUARDED)
    assert app.get("/ready").json()["model_version"] == guarded_versions.good
    client.set_registered_model_alias(GUARDED, "champion", guarded_versions.foreign)
    reload = app.post("/admin/reload", headers=AUTH)
    assert reload.status_code == 409 and "refused (outside_root)" in reload.json()["detail"], reload.text
    ready = app.get("/ready").json()
    assert ready["model_version"] == guarded_versions.good
    assert ready["refused"]["version"] == guarded_versions.foreign
    assert ready["refused"]["reason"] == "outside_root"
    assert "is not under the artifact root" in ready["refused"]["detail"]
    assert app.post("/predict", json=model_store.records(1)[0]).json()["model_version"] == guarded_versions.good
    assert not guarded_versions.marker.exists()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"  # create_app switched it off
