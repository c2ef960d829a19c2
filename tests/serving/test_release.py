"""Shadow and canary releases against a real server, a real registry and a real Prefect run of the analysis.

The challenger's arm is counted from the answers (``variant``) and from the inference
log; the bound on it is exact, not statistical: routing is a hash of the request id,
so the ids the challenger could have answered are known in advance.
"""

from __future__ import annotations

import functools
import gc
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.compute as pc
import pytest
import yaml

from checkpoints import Lake
from checkpoints.incidents import IncidentLog, State
from checkpoints.leases import LEASE_SECONDS, LEASES
from flows.config import SelfhealConfig, load_config
from flows.registry import Registry
from flows.release.controller import BAD_RELEASE, read_state, release_analysis_flow, start_release
from serving.inference_log import INFERENCE_TABLE
from serving.release import (
    OUTCOME_TAG,
    RELEASE_TAG,
    SHADOW_TABLE,
    MirroredBatch,
    ReleaseState,
    gathered,
    routes_to_challenger,
)
from tests.serving.conftest import ADMIN_TOKEN, MODEL, ModelStore, _training_frame, http, wait_until

pytestmark = pytest.mark.integration

SHARE = 0.2


@pytest.fixture(scope="module")
def noisy_versions(model_store: ModelStore) -> dict[str, str]:
    """Two more versions of ``clf``: trained on 35% flipped labels (worse), and on all labels inverted (bad)."""
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier

    from serving.modelio import log_sklearn_model
    from tests.serving.conftest import _pipeline

    X, y = _training_frame()
    numeric = [c for c in X.columns if c != "segment"]
    rng = np.random.default_rng(1)
    flipped = np.where(rng.random(len(y)) < 0.35, 1 - y, y)
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(model_store.tracking_uri)
    mlflow.set_registry_uri(model_store.tracking_uri)
    out = {}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: ["scikit-learn"])
            experiment = mlflow.get_experiment_by_name("serving-tests")
            assert experiment is not None
            for label, labels in (("noisy", flipped), ("inverted", 1 - y)):
                model = _pipeline(HistGradientBoostingClassifier(max_iter=20), numeric).fit(X, labels)
                with mlflow.start_run(experiment_id=experiment.experiment_id):
                    info = log_sklearn_model(model, X.head(5), registered_model_name=MODEL)
                out[label] = str(info.registered_model_version)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    return out


@pytest.fixture
def clean_release(model_store: ModelStore, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No release state or @challenger left over from another test (the registry is shared); admin token set."""
    monkeypatch.setenv("SELFHEAL_ADMIN_TOKEN", ADMIN_TOKEN)

    def clean() -> None:
        client = model_store.client()
        for call in (
            lambda: client.delete_registered_model_tag(MODEL, RELEASE_TAG),
            lambda: client.delete_registered_model_alias(MODEL, "challenger"),
        ):
            try:
                call()
            except Exception:
                pass
        for mv in client.search_model_versions(f"name = '{MODEL}'"):
            if OUTCOME_TAG in (mv.tags or {}):
                client.delete_model_version_tag(MODEL, mv.version, OUTCOME_TAG)
        model_store.switch.unlink(missing_ok=True)

    clean()
    yield
    clean()


#: Looks (1.5 s apart) a metric may lack its 10 samples before the release is held for a person.
#: At 2 (4.5 s) a canary whose challenger sleeps 0.5 s per batch was held on a fresh clone
#: (680446a, pytest -n 2): its rows had not reached the lake in time. These tests are about the
#: verdict once there is data; an analysis starved of data is tests/flows/release's.
INCONCLUSIVE_LIMIT = 8


def _config(tmp_path: Path, store: ModelStore, url: str, **release: Any) -> str:
    settings = {
        "steps": [SHARE],
        "interval_seconds": 1.5,
        "count": 4,
        "quality_metric": "accuracy",
        "metrics": {
            "error_rate": {
                "success_condition": "result <= 0.01",
                "failure_condition": "result > 0.05",
                "min_samples": 10,
                "inconclusive_limit": INCONCLUSIVE_LIMIT,
            },
            "latency_p99_ms": {
                "success_condition": "challenger <= champion * 3 + 50",
                "failure_condition": "challenger > champion * 3 + 100",
                "min_samples": 10,
                "inconclusive_limit": INCONCLUSIVE_LIMIT,
            },
            "prediction_distance": {
                "success_condition": "result <= 1",
                "min_samples": 10,
                "inconclusive_limit": INCONCLUSIVE_LIMIT,
            },
            "quality": {
                "success_condition": "result >= -0.05",
                "failure_condition": "result < -0.2",
                "min_samples": 10,
                "inconclusive_limit": INCONCLUSIVE_LIMIT,
            },
        },
        **release,
    }
    cfg = {
        "model_name": MODEL,
        "home": str(tmp_path / "home"),
        "tracking_uri": store.tracking_uri,
        "lake": {"root": str(tmp_path / "lake")},
        "data": {"task": "binary", "target": "y"},
        "serving": {"url": url, "workers": 2},
        "release": settings,
    }
    path = tmp_path / "selfheal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@dataclass
class Traffic:
    """Clients sending every record with a known request id and posting its true label."""

    url: str
    records: list[dict[str, Any]]
    labels: list[int]
    threads: int = 3
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def start(self) -> Traffic:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _loop(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                with self._lock:
                    n, self._next = self._next, self._next + 1
                i = n % len(self.records)
                rid = f"req-{n}"
                try:
                    response = client.post(f"{self.url}/predict", json=self.records[i], headers={"x-request-id": rid})
                    answer = response.json()
                    if response.status_code != 200:
                        raise AssertionError(f"{response.status_code} {answer}")
                    client.post(f"{self.url}/feedback", json={"request_id": rid, "label": float(self.labels[i])})
                except (httpx.HTTPError, AssertionError) as exc:
                    with self._lock:
                        self.errors.append(f"{rid}: {exc}")
                    continue
                with self._lock:
                    self.answers[rid] = answer

    def stop(self) -> Traffic:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)
        return self


def _traffic(store: ModelStore, url: str) -> Traffic:
    X, y = _training_frame()
    return Traffic(url, store.records(len(X)), [int(v) for v in y]).start()


@dataclass
class LiveRelease:
    """A live server, the release config naming it, and clients sending traffic to it."""

    url: str
    lake_root: Path
    config: str
    cfg: SelfhealConfig
    traffic: Traffic


@contextmanager
def _live_release(
    store: ModelStore,
    live_server: Any,
    tmp_path: Path,
    champion: str,
    server_options: dict[str, Any] | None = None,
    **release: Any,
) -> Iterator[LiveRelease]:
    """``champion`` (and ``lr`` as previous) served under traffic for the block; no client saw an error."""
    store.set_aliases(champion=champion, previous=store.versions["lr"])
    server = live_server(workers=2, **(server_options or {}))
    config = _config(tmp_path, store, server.url, **release)
    traffic = _traffic(store, server.url)
    try:
        yield LiveRelease(server.url, server.lake_root, config, load_config(config), traffic)
    finally:
        traffic.stop()
    assert traffic.errors == []


@pytest.fixture
def live_release(
    model_store: ModelStore, live_server: Any, tmp_path: Path, clean_release: None
) -> Callable[..., AbstractContextManager[LiveRelease]]:
    """``_live_release`` on this test's store, server factory and folder, with no release left over."""
    return functools.partial(_live_release, model_store, live_server, tmp_path)


def _wait_routing(url: str, mode: str) -> None:
    wait_until(
        lambda: all((http.get(f"{url}/ready").json()["release"] or {}).get("mode") == mode for _ in range(6)),
        timeout=60,
        what=f"every worker to route the {mode} release",
    )


def _challenger_rows(lake_root: Path, version: str) -> list[str]:
    lake = Lake(lake_root)
    log = lake.read(INFERENCE_TABLE, columns=["_request_id", "_variant", "_model_version", "_served_by"])
    mine = log.filter(pc.equal(pc.fill_null(log.column("_variant"), "champion"), "challenger"))
    return [str(r) for r in mine.column("_request_id").to_pylist()]


@pytest.mark.parametrize("fault", ["error", "latency", "labels"])
def test_a_worse_canary_is_rolled_back_and_never_saw_more_than_its_share(
    fault: str, model_store: ModelStore, noisy_versions: dict[str, str], live_release: Callable[..., Any]
) -> None:
    v = model_store.versions
    champion = v["hgb"]
    challenger = {"error": v["switch"], "latency": v["switch"], "labels": noisy_versions["inverted"]}[fault]
    with live_release(champion, {"predict_timeout_seconds": 2}) as live:
        traffic, cfg = live.traffic, live.cfg
        state = start_release(cfg, challenger, "canary")
        _wait_routing(live.url, "canary")
        # The switch model loads (and warms up) fine, then goes bad on live traffic.
        if fault == "error":
            model_store.switch.write_text("raise")
        elif fault == "latency":
            model_store.switch.write_text("sleep:0.5")
        final = release_analysis_flow(config_path=live.config, max_seconds=90)
        assert final["status"] == "rolled_back", (final["detail"], final["counts"])
        assert final["max_share"] == SHARE
        # The rollback was verified on the server before the flow returned: from here on, champion only.
        after = traffic._next
        wait_until(lambda: len(traffic.answers) > after + 50, timeout=60, what="traffic after the rollback")
    registry = Registry(cfg.tracking_uri, MODEL)
    assert registry.by_alias("challenger") is None and registry.by_alias("champion").version == champion  # type: ignore[union-attr]
    assert registry.version(challenger).tags[OUTCOME_TAG] == "rolled_back"
    # Only requests whose id hashes into the share were ever routed to the challenger.
    routed = {rid for rid, a in traffic.answers.items() if a["variant"] == "challenger"}
    assert routed, "the canary got no traffic"
    assert all(routes_to_challenger(rid, SHARE) for rid in routed)
    assert len(routed) <= sum(routes_to_challenger(rid, SHARE) for rid in traffic.answers)
    late = [rid for rid in routed if int(rid.split("-")[1]) >= after]
    assert late == [], "the challenger answered after the rollback was verified"
    # The inference log says the same.
    wait_until(
        lambda: set(_challenger_rows(live.lake_root, challenger)) >= routed, timeout=60, what="the log to be written"
    )
    assert set(_challenger_rows(live.lake_root, challenger)) == routed
    # An incident with its MTTR, recorded the way the healer records its own.
    incidents = [i for i in IncidentLog(Lake(cfg.lake.root)).incidents() if i.cause == BAD_RELEASE]
    assert len(incidents) == 1 and incidents[0].state == State.RESOLVED
    assert incidents[0].mttr_seconds is not None and incidents[0].mttr_seconds > 0
    assert incidents[0].evidence["release_id"] == state.release_id
    # The release held the incident before its first row was written, so no healer could take it.
    leases = Lake(cfg.lake.root).read(LEASES).to_pylist()
    (lease,) = [r for r in leases if r["incident_id"] == incidents[0].id]
    assert lease["expires_at"] - timedelta(seconds=LEASE_SECONDS) <= incidents[0].transitions[0].ts
    failed = {m["metric"] for m in incidents[0].evidence["failed"]}
    # The metric the fault worsens failed; on a 2-s sample another may fail with it (CI saw
    # quality fail beside latency once), which still rolls back the same way.
    worsened = {"error": "error_rate", "latency": "latency_p99_ms", "labels": "quality"}[fault]
    assert worsened in failed, incidents[0].evidence


def test_a_better_canary_is_promoted(
    model_store: ModelStore, noisy_versions: dict[str, str], live_release: Callable[..., Any]
) -> None:
    v = model_store.versions
    with live_release(noisy_versions["noisy"], steps=[SHARE, 0.5], step_seconds=2.0) as live:
        start_release(live.cfg, v["hgb"], "canary")
        final = release_analysis_flow(config_path=live.config, max_seconds=90)
        assert final["status"] == "promoted", final
        wait_until(
            lambda: http.get(f"{live.url}/ready").json()["model_version"] == v["hgb"], timeout=60, what="the promotion"
        )
    cfg = live.cfg
    registry = Registry(cfg.tracking_uri, MODEL)
    assert registry.by_alias("champion").version == v["hgb"]  # type: ignore[union-attr]
    assert registry.by_alias("previous").version == noisy_versions["noisy"]  # type: ignore[union-attr]
    assert registry.by_alias("challenger") is None
    assert final["step"] == 1 and final["measurements"] == cfg.release.count  # it went up to 50% first
    assert not [i for i in IncidentLog(Lake(cfg.lake.root)).incidents() if i.cause == BAD_RELEASE]


def _answers(url: str, records: list[dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    out = {}
    with httpx.Client(timeout=10.0) as client:
        for i, record in enumerate(records):
            rid = f"{prefix}-{i}"
            answer = client.post(f"{url}/predict", json=record, headers={"x-request-id": rid}).json()
            out[rid] = {k: answer[k] for k in ("model_version", "served_by", "predictions", "scores", "variant")}
    return out


def test_shadow_never_changes_an_answer(
    model_store: ModelStore,
    live_server: Any,
    tmp_path: Path,
    clean_release: None,
) -> None:
    v = model_store.versions
    model_store.set_aliases(champion=v["hgb"], previous=v["lr"])
    server = live_server(workers=2)
    cfg = load_config(_config(tmp_path, model_store, server.url, shadow_share=1.0))
    records = model_store.records(60)
    without = _answers(server.url, records, "same")
    start_release(cfg, v["lr"], "shadow")
    _wait_routing(server.url, "shadow")
    with_shadow = _answers(server.url, records, "same")
    assert with_shadow == without
    assert {a["variant"] for a in with_shadow.values()} == {"champion"}
    # The challenger did see those requests, off the request path, in its own table.
    lake = Lake(server.lake_root)

    def mirrored() -> set[str]:
        if not lake.exists(SHADOW_TABLE):
            return set()
        return set(lake.read(SHADOW_TABLE, columns=["_request_id"]).column("_request_id").to_pylist())

    wait_until(lambda: len(mirrored() & set(with_shadow)) >= len(records) // 2, timeout=60, what="shadow rows")
    state = read_state(Registry(cfg.tracking_uri, MODEL))
    assert state is not None and state.mode == "shadow" and state.routing
    # Each worker's /ready counts what its shadow predicted (and dropped); together, every mirrored row.
    counts: dict[int, dict[str, int]] = {}

    def every_worker() -> bool:
        ready = http.get(f"{server.url}/ready").json()
        counts[ready["pid"]] = ready["release"]["mirrored_rows"]
        return len(counts) == 2

    wait_until(every_worker, timeout=30, what="both workers' /ready", interval=0.01)
    assert sum(c["predicted"] for c in counts.values()) >= len(mirrored() & set(with_shadow))


# -- routing and state, no server needed ------------------------------------------------


def test_routing_is_deterministic_and_near_the_share() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [i for i in ids if routes_to_challenger(i, 0.1)]
    assert chosen == [i for i in ids if routes_to_challenger(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert set(chosen) <= {i for i in ids if routes_to_challenger(i, 0.25)}  # a step up keeps who it had
    assert not any(routes_to_challenger(i, 0.0) for i in ids[:100]) and all(
        routes_to_challenger(i, 1.0) for i in ids[:100]
    )


def test_release_state_round_trips_through_its_tag() -> None:
    state = ReleaseState("r", "shadow", "3", "2", 1.0, counts={"quality": [1, 0, 2]})
    assert ReleaseState.from_tag(state.to_tag()) == state
    assert ReleaseState.from_tag("{not json") is None and ReleaseState.from_tag(None) is None
    assert state.routing and not state.evolve(status="rolled_back").routing
    # Nothing owed: the tag an older reader parses; owed: it round-trips; a newer writer's keys are skipped.
    assert "owed_incident" not in json.loads(state.to_tag())
    owed = state.evolve(owed_incident={"id": "inc-1", "detected_at": "2026-01-01T00:00:00+00:00", "failed": []})
    assert ReleaseState.from_tag(owed.to_tag()) == owed
    assert ReleaseState.from_tag(json.dumps({**json.loads(state.to_tag()), "later_field": 1})) == state


def test_a_mirrored_copy_is_kept_as_untracked_bytes_and_reads_back_exactly() -> None:
    columns: dict[str, list[Any]] = {"f0": [0.5, float("nan"), None], "channel": ["pos", "web", None]}
    packed = MirroredBatch.pack(columns, ["a", "b", "c"], 1_700_000_000_000_000)
    assert not gc.is_tracked(packed)  # the worker's collector never scans a waiting copy
    batch = MirroredBatch(4, [packed, MirroredBatch.pack({"f0": [1.0], "channel": ["pos"]}, ["d"], 7)])
    first, second = batch.items()
    assert (first.rows, first.row_ids, first.received_us) == (3, ["a", "b", "c"], [1_700_000_000_000_000] * 3)
    assert first.columns["f0"][0] == 0.5 and np.isnan(first.columns["f0"][1]) and first.columns["f0"][2] is None
    assert first.columns["channel"] == ["pos", "web", None]
    assert (second.rows, second.row_ids, second.received_us, second.columns) == (
        1,
        ["d"],
        [7],
        {"f0": [1.0], "channel": ["pos"]},
    )
    assert gathered(batch.items())["channel"] == ["pos", "web", None, "pos"]
