"""``selfheal heal``, ``selfheal incidents`` and ``selfheal incidents ack``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from flows.cli.command import Commands, Subparsers, config
from flows.cli.lake import open_lake

_HEAL = """\
Run the healer: each tick runs a monitor pass and probes the tracking store, landing
zone, quarantine and server; diagnoses signals into causes; opens incidents and moves
them DETECTED -> DIAGNOSED -> HEALING -> VERIFYING -> RESOLVED (or ESCALATED).
State lives in the incidents table, so a restarted healer resumes where it stopped.
When the lake's object store does not answer, each tick says so on stderr and the
healer keeps ticking; the first tick that reaches the lake again records the outage as
an upstream_outage incident (--once exits 1 instead).
With healing.enabled: false it detects and records but repairs nothing.
Incident and signal events go to Prefect when PREFECT_API_URL is set (or with
--prefect); otherwise none are sent and no Prefect server is started for them.
With --once, Prefect, MLflow and scikit-learn are imported only if a remedy needs
them (a retrain runs the pipeline flow, which also checks trainer.estimator then)."""

_ACK = """\
Record that a person has taken an escalated incident over. It stays ESCALATED;
its cause stops waiting out healing.escalation_hold_seconds, so the next fault of
that cause opens a new incident (and is healed) at once."""


_APPROVE = """\
healing.approval: {REMEDY: approve} makes the healer wait before REMEDY: the incident
shows AWAITING_APPROVAL and its MTTR clock keeps running. Approving lets the proposed
remedy (or, with --remedy, another one healing.policy allows for the cause) start at
the healer's next tick. The approval is logged as a decision (it feeds `policy train`)."""

_VETO = """\
The healer never starts a vetoed remedy for this incident: one awaiting approval is
dropped and the next allowed remedy is chosen (or the incident escalates when none is
left). A remedy already running cannot be vetoed. The veto is logged as a decision."""


def register(sub: Subparsers) -> None:
    """Add ``heal`` and ``incidents [ack]`` (they run flows in this process)."""
    # A tick runs a flow only for a remedy that runs the pipeline: Prefect is imported then.
    commands = Commands(sub, runs_flows=True, flows_on_demand=True)
    heal = commands.add(
        "heal", cli_heal, "watch and repair: monitor pass -> diagnosis -> remedies -> verified recovery", _HEAL
    )
    mode = heal.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one tick, then exit")
    mode.add_argument(
        "--interval", type=float, default=None, help="seconds between ticks (default healing.interval_seconds)"
    )
    heal.add_argument("--no-monitor", action="store_true", help="skip the monitor pass (probes only)")
    heal.add_argument(
        "--prefect",
        action="store_true",
        help="send events to Prefect even without PREFECT_API_URL (starts Prefect's temporary local server)",
    )

    inc = commands.add(
        "incidents", cli_incidents, "list incidents: cause, remedies tried, outcome, MTTR; summary per cause"
    )
    inc.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="write JSON (to stdout without PATH)"
    )
    below = commands.below(inc, "incident commands", required=False)
    ack = below.add("ack", cli_ack, "acknowledge an ESCALATED incident: you have it now", _ACK)
    ack.add_argument("incident", help="the incident id (see `selfheal incidents`)")
    ack.add_argument("--by", default=None, help="who takes it (default: $USER)")
    ack.add_argument("--note", default="", help="a line for the record, e.g. what you will do")
    approve = below.add("approve", cli_approve, "let the remedy an incident AWAITING_APPROVAL proposes run", _APPROVE)
    approve.add_argument("incident", help="the incident id (see `selfheal incidents`)")
    approve.add_argument("--remedy", default=None, help="run this allowed remedy instead of the proposed one")
    approve.add_argument("--by", default=None, help="who approves (default: $USER)")
    veto = below.add("veto", cli_veto, "forbid a remedy for an open incident: the healer never applies it there", _VETO)
    veto.add_argument("incident", help="the incident id (see `selfheal incidents`)")
    veto.add_argument("--remedy", required=True, help="the remedy to forbid (e.g. the one awaiting approval)")
    veto.add_argument("--by", default=None, help="who vetoes (default: $USER)")


def cli_heal(args: argparse.Namespace) -> int:
    """``selfheal heal --once | --interval S``."""
    from serving.processes import yield_cpu

    yield_cpu()  # its passes and retrains must not slow the model server on the same machine down
    # The healer and the lake load when the command runs, not on --help (Prefect, MLflow: for remedies that need them).
    from flows.healer.machine import HealerLoop
    from flows.healer.remedies import RemedyFailed

    # A healer that keeps ticking refuses a bad trainer.estimator at start; one tick leaves
    # it to the pipeline run of a retrain, if there is one (scikit-learn is 2 s of imports).
    cfg = config(check_estimator=not args.once)
    config_path = os.environ.get("SELFHEAL_CONFIG")
    loop = HealerLoop(cfg, config_path, run_monitor=not args.no_monitor, warm_models=not args.once)
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
        outage = loop.lake_outage
        if outage is not None:  # nothing was read or written this tick; the loop records the outage once it ends
            since = outage.since.astimezone().strftime("%H:%M:%S")
            print(f"selfheal heal: the lake is unreachable since {since}: {outage.error}", file=sys.stderr, flush=True)
            if args.once:
                return 1
        else:
            for i in still_open:
                print(f"  open {i.id} {i.cause:<16} {i.state.value:<17} {i.last.detail[:90]}")
        if args.once:
            return 0
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def cli_incidents(args: argparse.Namespace) -> int:
    """``selfheal incidents [--json]``: every incident, then a summary per cause."""
    from checkpoints.incidents import INCIDENTS, IncidentLog, summarize, to_report  # pandas: not on --help

    lake = open_lake()
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
    print(f"{'incident':<30} {'cause':<16} {'state':<17} {'remedies tried':<30} {'MTTR':>8}")
    for i in incidents:
        tried = ", ".join(i.remedies_tried) or "-"
        print(f"{i.id:<30} {i.cause:<16} {i.state.value:<17} {tried:<30} {_fmt_seconds(i.mttr_seconds):>8}")
    print(f"\n{'cause':<16} {'count':>5} {'resolved':>8} {'escalated':>9} {'median MTTR':>12} {'max MTTR':>10}")
    for s in summarize(incidents):
        print(
            f"{s.cause:<16} {s.count:>5} {s.resolved:>8} {s.escalated:>9} "
            f"{_fmt_seconds(s.median_mttr):>12} {_fmt_seconds(s.max_mttr):>10}"
        )
    return 0


def cli_ack(args: argparse.Namespace) -> int:
    """``selfheal incidents ack ID [--by NAME] [--note TEXT]``."""
    # The incident log and our errors live in checkpoints, which imports pandas: not on --help.
    from checkpoints.exceptions import SelfhealError
    from checkpoints.incidents import IncidentLog

    log = IncidentLog(open_lake())
    incident = log.get(args.incident)
    if incident is None:
        raise SelfhealError(f"no incident {args.incident!r} (see `selfheal incidents`)")
    try:
        done = log.acknowledge(incident, args.by or os.environ.get("USER") or "someone", args.note)
    except ValueError as exc:
        raise SelfhealError(str(exc)) from exc
    print(f"{incident.id} ({incident.cause}): " + (done.last.detail if done else "already acknowledged"))
    return 0


def _person_says(args: argparse.Namespace, kind: str) -> int:
    """``approve`` and ``veto``: checked against the incident and the policy, then logged."""
    from checkpoints.decisions import DecisionLog
    from checkpoints.exceptions import SelfhealError
    from checkpoints.incidents import IncidentLog, State

    cfg = config(check_estimator=False)
    lake = open_lake(cfg)
    log = IncidentLog(lake)
    incident = log.get(args.incident)
    if incident is None:
        raise SelfhealError(f"no incident {args.incident!r} (see `selfheal incidents`)")
    by = args.by or os.environ.get("USER") or "someone"
    allowed = cfg.healing.policy.get(incident.cause, [])
    remedy = args.remedy or (str(incident.proposal.evidence["proposed"]) if incident.proposal else None)
    if remedy is not None and remedy not in allowed:
        raise SelfhealError(f"{remedy!r} is not allowed for {incident.cause} (healing.policy: {', '.join(allowed)})")
    try:
        if kind == "approve":
            if remedy in DecisionLog(lake).vetoed(incident.id):
                raise ValueError(f"{remedy} was vetoed for {incident.id}")
            done = log.approve(incident.id, by, remedy)
        else:
            if incident.state.closed:
                raise ValueError(f"{incident.id} is {incident.state.value}: nothing left to veto")
            running = incident.state in (State.HEALING, State.VERIFYING) and incident.last.remedy == remedy
            if running:
                raise ValueError(f"{remedy} is already {incident.state.value} for {incident.id}")
            done = incident
    except ValueError as exc:
        raise SelfhealError(str(exc)) from exc
    DecisionLog(lake).say(kind, incident.cause, remedy, by, incident_id=incident.id)  # type: ignore[arg-type]
    verb = "approved" if kind == "approve" else "vetoed"
    print(f"{done.id} ({done.cause}): {remedy} {verb} by {by}")
    return 0


def cli_approve(args: argparse.Namespace) -> int:
    """``selfheal incidents approve ID [--remedy R] [--by NAME]``."""
    return _person_says(args, "approve")


def cli_veto(args: argparse.Namespace) -> int:
    """``selfheal incidents veto ID --remedy R [--by NAME]``."""
    return _person_says(args, "veto")
