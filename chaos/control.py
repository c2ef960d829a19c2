"""The Chaos Toolkit control every selfheal experiment declares: the fault ledger and the sandbox.

Before the experiment it marks the start of a run in the fault ledger (so recovery
probes measure from *this* run's fault), and makes sure a sandbox exists: when the
configuration's sandbox folder records none (``chaos run chaos/experiments/x.yaml``
straight from a shell), it builds one from the project's ``selfheal.yaml`` and stops
it after the experiment. The suite (``selfheal chaos run``) starts its sandbox once
and points ``SELFHEAL_CHAOS_SANDBOX`` at it, so this control leaves it alone. Before
the rollbacks undo the fault it records in the ledger what became of the landing files
(rows lost, rows awaiting a person), which a rollback that removes them would erase::

    controls:
      - name: selfheal
        provider:
          type: python
          module: chaos.control
          arguments: {project_config: selfheal.yaml}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution

from chaos import _landing, ledger
from chaos.sandbox import Sandbox, SandboxError
from checkpoints.exceptions import CheckpointError

logger = logging.getLogger(__name__)

SANDBOX_KEY = "sandbox"
#: Sandboxes this control started (stopped when the experiment ends).
_started: list[Sandbox] = []


def before_experiment_control(
    context: dict[str, Any],
    configuration: dict[str, Any] | None = None,
    project_config: str = "selfheal.yaml",
    start_sandbox: bool = True,
    **kwargs: Any,
) -> None:
    """Start a sandbox if none is running where the configuration says, then mark the run in the ledger."""
    config = configuration or {}
    root = config.get(SANDBOX_KEY)
    if root and start_sandbox:
        # An experiment tagged `production` runs on the production topology's sandbox.
        profile = "production" if "production" in (context.get("tags") or []) else "embedded"
        box = Sandbox(Path(str(root)), project_config=Path(project_config), profile=profile)
        recorded = box.state()
        if recorded is not None and recorded.profile != profile:
            raise InterruptExecution(
                f"the sandbox under {root} runs the {recorded.profile} profile; this experiment needs {profile}"
                " (stop it: python -m chaos.sandbox down --root ...)"
            )
        # Only where none is recorded: a sandbox someone else started is theirs, even while its server restarts.
        if recorded is None:
            logger.info("no sandbox under %s: starting one (a minute or two)", root)
            try:
                box.up()
            except (SandboxError, OSError) as exc:
                raise InterruptExecution(f"could not start the sandbox under {root}: {exc}") from exc
            _started.append(box)
            _point_at(box, context, config)
    ledger.record(config, "run", experiment=str(context.get("title", "")))


def _point_at(box: Sandbox, experiment: dict[str, Any], configuration: dict[str, Any]) -> None:
    """Give the configuration keys read from ``SELFHEAL_CHAOS_*`` variables the new sandbox's values.

    The configuration was loaded before this control ran; Chaos Toolkit substitutes
    ``${key}`` from this same mapping when each activity runs, so updating it here
    reaches every activity of the experiment.
    """
    env = box.environment()
    os.environ.update(env)
    for key, spec in (experiment.get("configuration") or {}).items():
        if isinstance(spec, dict) and spec.get("type") == "env" and spec.get("key") in env:
            configuration[key] = env[spec["key"]]


def before_rollback_control(
    context: dict[str, Any], configuration: dict[str, Any] | None = None, **kwargs: Any
) -> None:
    """Before the rollbacks undo the fault, record what became of the landing files in the ledger.

    A rollback removes the files a data fault injected, so rows lost and rows awaiting a
    person (an escalated quarantine) are only countable here, at the verdict.
    """
    config = configuration or {}
    landing, lake_root = config.get("landing"), config.get("lake_root")
    if not (landing and lake_root and ledger.last_event(config, "fault") is not None):
        return
    try:
        found = _landing.account(str(landing), str(lake_root))
    except (CheckpointError, OSError) as exc:  # a lake mid-repair: no figure rather than a wrong one
        logger.warning("landing files not accounted for: %s", exc)
        return
    ledger.record(config, "accounted", detail=found.counts())


def after_experiment_control(context: dict[str, Any], state: Any = None, **kwargs: Any) -> None:
    """Stop a sandbox this control started."""
    cleanup_control()


def cleanup_control() -> None:
    """Stop the sandboxes this control started (Chaos Toolkit calls this at cleanup too, also after an abnormal end)."""
    while _started:
        box = _started.pop()
        box.down()
        logger.info("stopped the sandbox under %s (its files stay for inspection)", box.root)
