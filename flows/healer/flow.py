"""The healer as a Prefect flow: one tick per run (the ``selfheal-healer`` deployment).

``selfheal heal`` runs its ticks in-process without Prefect (``machine.HealerLoop``);
a deployment, or a trigger on a ``selfheal.signal.*`` event, runs this flow: the same
tick (``machine.observe`` then ``Healer.tick``) with a fresh context each run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger

from checkpoints.incidents import IncidentLog, to_report
from flows.config import load_config
from flows.healer.machine import Healer, make_context, observe, warm_up


@flow(name="selfheal-healer")
def healer_flow(
    config_path: str | None = None, run_monitor: bool = True, since: datetime | None = None
) -> list[dict[str, Any]]:
    """One healer tick: observe, diagnose, open/join incidents, move them. Returns the open ones."""
    cfg = load_config(config_path)
    ctx = make_context(cfg, config_path)
    warm_up(ctx)
    healer = Healer(ctx, IncidentLog(ctx.lake))
    observation = observe(
        ctx, since or datetime.now(UTC) - timedelta(seconds=cfg.healing.interval_seconds * 2), run_monitor
    )
    still_open = healer.tick(observation)
    get_run_logger().info("healer tick: %d signal(s), %d open incident(s)", len(observation.signals), len(still_open))
    return [to_report(i) for i in still_open]
