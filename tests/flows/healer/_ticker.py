"""A healer in its own process: ``python -m tests.flows.healer._ticker CONFIG START_AT SECONDS``.

Waits until the wall clock reaches ``START_AT`` (epoch seconds: several tickers start
their first tick together), then ticks the healer with empty observations for
``SECONDS`` and prints how many ticks it made.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from checkpoints.incidents import IncidentLog
from flows.config import load_config
from flows.healer.machine import Healer, Observation, make_context


def main(config: str, start_at: float, seconds: float) -> int:
    cfg = load_config(config)
    ctx = make_context(cfg, config)
    healer = Healer(ctx, IncidentLog(ctx.lake))
    time.sleep(max(0.0, start_at - time.time()))
    ticks, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        healer.tick(Observation(datetime.now(UTC), []))
        ticks += 1
        time.sleep(0.2)
    print(ticks)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
