"""The environment a test starts ``python -m serving`` with (shared by the serving and chaos tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The test estimator's type (tests/serving/_estimators.py), reviewed for the test servers as config would.
TEST_TRUSTED_TYPES = '["tests.serving._estimators.FailSwitchClassifier"]'


def server_env(
    tracking_uri: str, model: str, admin_token: str, lake_root: Path | None, run_dir: Path, **overrides: Any
) -> dict[str, str]:
    """This process's environment without its ``SELFHEAL_*`` settings, plus a server's own.

    ``lake_root`` None: no lake. ``overrides``: more ``SELFHEAL_<KEY>`` settings by lower-case
    key; ``None`` drops one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "PYTHONPATH": str(REPO_ROOT),
            "SELFHEAL_TRACKING_URI": tracking_uri,
            "SELFHEAL_MODEL_NAME": model,
            "SELFHEAL_LAKE_ROOT": str(lake_root),
            "SELFHEAL_DEAD_LETTER_DIR": str(run_dir / "dead-letter"),
            "SELFHEAL_RUNTIME_DIR": str(run_dir / "run"),
            "SELFHEAL_ADMIN_TOKEN": admin_token,
            "SELFHEAL_POLL_SECONDS": "1",
            "SELFHEAL_CONTROL_CHECK_SECONDS": "0.2",
            "SELFHEAL_LOG_FLUSH_SECONDS": "0.5",
            "SELFHEAL_TRUSTED_TYPES": TEST_TRUSTED_TYPES,
        }
    )
    env.update({f"SELFHEAL_{k.upper()}": str(v) for k, v in overrides.items()})
    return {k: v for k, v in env.items() if v != "None"}
