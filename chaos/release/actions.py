"""Release faults: a subtly worse model released through a canary, and the undo.

The worse model is real: fitted on the lake's silver rows with a share of its labels
flipped (label noise, as a bad join or a labelling bug makes it), logged in the
project's model format as a new version, and released the way a person or the
pipeline releases one: ``selfheal release start --mode canary``. It ranks nearly as
well as the champion, which is what makes it subtle; its probabilities are off.
"""

# No ``from __future__ import annotations``: discovery reads these annotations at run time.

import logging
import os
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

from chaos import ledger
from chaos.registry import _store
from chaos.registry.actions import Training, _register_inverted
from chaos.release.probes import release_state
from chaos.sandbox import Sandbox
from chaos.serving._server import run_command
from serving.registry import CHAMPION, CHAOS_TAG

__all__ = ["end_release", "release_worse_model"]

logger = logging.getLogger(__name__)

WORSE_MODEL = "worse_model"


def _selfheal(config_path: str, configuration: Configuration | None, *args: str, timeout: float = 120.0) -> str:
    """Run ``selfheal release ...`` against the sandbox (its Prefect server: events and flow runs go there)."""

    env = dict(os.environ)
    root = (configuration or {}).get("sandbox")
    state = Sandbox(Path(str(root))).state() if root else None
    if state is not None:
        env["PREFECT_API_URL"] = state.prefect_api_url
    return run_command(["selfheal", "-c", config_path, "release", *args], timeout, env).strip()


def release_worse_model(
    tracking_uri: str,
    model_name: str,
    lake_root: str,
    target: str,
    config_path: str,
    flip: float = 0.3,
    silver_table: str = "silver",
    seed: int = 0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Register a model fitted with ``flip`` of its labels flipped and start a canary release of it.

    It claims nothing: the release's analysis has to find out on live traffic. The
    fault's time (the clock of the recovery probes) is when the canary started, as the
    release state records it, not when the command line got round to it. Undo with
    ``end_release``.
    """
    if not 0.0 < flip < 1.0:
        raise ValueError(f"flip must be in (0, 1) for a subtly worse model, got {flip}")
    registry = _store.registry(tracking_uri, model_name)
    current = registry.by_alias(CHAMPION)
    if current is None:
        raise ActivityFailed(f"model {model_name!r} has no @champion in {tracking_uri}: nothing to compare with")
    champion = current.version
    worse = _register_inverted(registry, current, Training(lake_root, silver_table, target, seed), flip, WORSE_MODEL)
    registry.set_tag(worse, CHAOS_TAG, WORSE_MODEL)
    out = _selfheal(config_path, configuration, "start", "--version", worse, "--mode", "canary")
    state = release_state(tracking_uri, model_name)
    if state.get("challenger") != worse:
        raise ActivityFailed(f"the canary of v{worse} did not start: release state {state}")
    at = ledger.record(
        configuration,
        "fault",
        fault="release_worse_model",
        detail={"model": model_name, "worse": worse, "champion": champion, "flip": flip},
        at=float(state["started_at"]),
    )
    logger.info("canary release of worse model %s v%s (flip %.0f%%) over v%s", model_name, worse, flip * 100, champion)
    return {"worse_version": worse, "champion": champion, "started": out, "at": at}


def end_release(config_path: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Undo release_worse_model: abort the release if the analysis has not ended it (nothing to do if it has)."""
    if ledger.last_fault(configuration, "release_worse_model") is None:
        return {"aborted": False, "detail": "no worse model was released in this run"}
    try:
        out = _selfheal(config_path, configuration, "abort", "--reason", "chaos experiment rollback")
    except ActivityFailed as exc:
        if "no release is running" not in str(exc):
            raise
        outcome = {"aborted": False, "detail": "the release had already ended"}
    else:
        outcome = {"aborted": True, "detail": out}
    ledger.record(configuration, "restore", fault="end_release", detail=outcome)
    return outcome
