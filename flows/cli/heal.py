"""``selfheal heal`` and ``selfheal incidents``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from checkpoints import Lake
from checkpoints.exceptions import SelfhealError
from checkpoints.incidents import INCIDENTS, IncidentLog, summarize, to_report
from flows.config import load_config
from flows.healer.machine import HealerLoop
from flows.healer.remedies import RemedyFailed


def cli_heal(args: argparse.Namespace) -> int:
    """``selfheal heal --once | --interval S``."""
    cfg = load_config()
    config_path = os.environ.get("SELFHEAL_CONFIG")
    loop = HealerLoop(cfg, config_path, run_monitor=not args.no_monitor)
    interval = args.interval if args.interval is not None else cfg.healing.interval_seconds
    mode = "on" if cfg.healing.enabled else "OFF (detection only)"
    print(f"selfheal heal: healing {mode}; tick every {interval:g} s" if not args.once else "selfheal heal: one tick")
    while True:
        started = time.monotonic()
        try:
            still_open = loop.tick()
        except RemedyFailed as exc:
            print(f"selfheal heal: {exc}")
            return 1
        for incident in still_open:
            print(f"  open {incident.id} {incident.cause:<16} {incident.state.value:<10} {incident.last.detail[:90]}")
        if args.once:
            return 0
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def cli_incidents(args: argparse.Namespace) -> int:
    """``selfheal incidents [--json]``: every incident, then a summary per cause."""
    cfg = load_config()
    lake = Lake(cfg.lake.root, cfg.lake.storage_options or None)
    incidents = IncidentLog(lake).incidents() if lake.exists(INCIDENTS) else []
    if args.json:
        report = {
            "incidents": [to_report(i) for i in incidents],
            "summary": [s.__dict__ for s in summarize(incidents)],
        }
        text = json.dumps(report, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
            print(f"wrote {args.json}")
        return 0
    if not incidents:
        print("no incidents")
        return 0
    print(f"{'incident':<30} {'cause':<16} {'state':<10} {'remedies tried':<30} {'MTTR':>8}")
    for i in incidents:
        tried = ", ".join(i.remedies_tried) or "-"
        print(f"{i.id:<30} {i.cause:<16} {i.state.value:<10} {tried:<30} {_fmt_seconds(i.mttr_seconds):>8}")
    print(f"\n{'cause':<16} {'count':>5} {'resolved':>8} {'escalated':>9} {'median MTTR':>12} {'max MTTR':>10}")
    for s in summarize(incidents):
        print(
            f"{s.cause:<16} {s.count:>5} {s.resolved:>8} {s.escalated:>9} "
            f"{_fmt_seconds(s.median_mttr):>12} {_fmt_seconds(s.max_mttr):>10}"
        )
    return 0


def cli_ack(args: argparse.Namespace) -> int:
    """``selfheal incidents ack ID [--by NAME] [--note TEXT]``."""
    cfg = load_config()
    log = IncidentLog(Lake(cfg.lake.root, cfg.lake.storage_options or None))
    incident = log.get(args.incident)
    if incident is None:
        raise SelfhealError(f"no incident {args.incident!r} (see `selfheal incidents`)")
    try:
        done = log.acknowledge(incident, args.by or os.environ.get("USER") or "someone", args.note)
    except ValueError as exc:
        raise SelfhealError(str(exc)) from exc
    print(f"{incident.id} ({incident.cause}): " + (done.last.detail if done else "already acknowledged"))
    return 0
