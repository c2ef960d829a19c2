"""``selfheal policy train | evaluate | show | pin | unpin | explore``: the learned remedy policy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli.command import Commands, Subparsers, config
from flows.cli.lake import open_lake

if TYPE_CHECKING:
    from checkpoints import Lake
    from flows.config import SelfhealConfig
    from flows.healer.policy import PolicyTable

_GROUP = """\
The healer's remedy policy. healing.policy lists the remedies allowed per cause, in
order (the rules). With healing.policy_mode: learned the healer picks among them with
a table learned from the decisions log: every remedy choice, its context (severity,
effect size, label freshness, model age, budget left, remedies already tried), who
chose it and how fast the incident recovered. It keeps the rules where the table has
too few outcomes, and everywhere when the table was not estimated better than the rules.
Exploration (random choices) happens only in the chaos sandbox: `policy explore`."""

_TRAIN = """\
Log the choices of closed incidents not yet in the decisions log, learn the table
(mean reward per cause, context and remedy: reward = -(seconds to verified recovery)
- cost, an escalation a large penalty), estimate its mean MTTR on the logged first
choices against the rules' (doubly robust, 95% bootstrap interval), store it in the
lake's policy table and print it. The healer reads the newest table at its next choice."""

_EVALUATE = """\
Estimate the newest trained table's mean MTTR on the decisions logged now, against the
rules' estimate and their measured MTTR. Exits 1 when it is not better: keep
healing.policy_mode: rules (a healer in learned mode keeps the rules then, and says so)."""

_EXPLORE = """\
Run the chaos suite (healing on) with healing.policy_mode: learned and
healing.learning.explore_epsilon set, so the sandbox's healer sometimes picks a random
allowed remedy; its decisions are copied into this project's decisions log, then the
policy is trained on them. SLA misses of exploring runs are expected and reported, not
failures of this command."""


def register(sub: Subparsers) -> None:
    """Add the ``policy`` group."""
    group = Commands(sub).group("policy", "learn, inspect, pin the healer's remedy choices", _GROUP)
    group.add("train", cli_train, "learn the policy from the decisions log and store it", _TRAIN)
    group.add("evaluate", cli_evaluate, "estimate the trained policy's MTTR against the rules'", _EVALUATE)
    group.add("show", cli_show, "the learned table in words: per cause and context, the remedy and its evidence")
    pin = group.add("pin", cli_pin, "always start REMEDY for CAUSE (over the learned choice) until unpinned")
    pin.add_argument("cause", help="an incident cause, e.g. data_drift")
    pin.add_argument("remedy", help="one of healing.policy's remedies for that cause")
    pin.add_argument("--by", default=None, help="who decides (default: $USER)")
    pin.add_argument("--note", default="", help="a line for the record")
    unpin = group.add("unpin", cli_unpin, "remove the pin of CAUSE")
    unpin.add_argument("cause")
    unpin.add_argument("--by", default=None, help="who decides (default: $USER)")
    explore = Commands(group.sub, runs_flows=True).add(
        "explore", cli_explore, "run the chaos suite with exploring choices, then train on them", _EXPLORE
    )
    explore.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all)")
    explore.add_argument("--epsilon", type=float, default=0.3, help="chance of a random allowed remedy (default 0.3)")
    explore.add_argument("--rounds", type=int, default=1, help="suite runs (each on a fresh sandbox; default 1)")


def _by(value: str | None) -> str:
    return value or os.environ.get("USER") or "someone"


def _train(cfg: SelfhealConfig, lake: Lake) -> PolicyTable:
    from checkpoints.decisions import DecisionLog
    from checkpoints.incidents import INCIDENTS, IncidentLog
    from flows.healer import policy

    log = DecisionLog(lake)
    if lake.exists(INCIDENTS):
        added = policy.backfill(cfg, IncidentLog(lake).incidents(), log)
        if added:
            print(f"logged {added} decision(s) of closed incidents the healer had not logged")
    decisions = log.decisions()
    table = policy.PolicyTable.train(cfg, decisions)
    table.evaluation = policy.evaluate(cfg, table, decisions)
    version = table.save(lake)
    outcomes = sum(1 for d in decisions if d.kind == "remedy")
    print(f"trained on {outcomes} remedy outcome(s); policy table version {version}")
    return table


def cli_train(args: argparse.Namespace) -> int:
    """``selfheal policy train``."""
    from flows.healer import policy

    cfg = config(check_estimator=False)
    table = _train(cfg, open_lake(cfg))
    print("\n".join(policy.describe(table, cfg)))
    return 0


def _trained(cfg: SelfhealConfig) -> tuple[Lake, PolicyTable | None]:
    from flows.healer.policy import PolicyTable

    lake = open_lake(cfg)
    return lake, PolicyTable.load(lake)


_UNTRAINED = "no policy trained yet: run `selfheal policy train`"


def cli_evaluate(args: argparse.Namespace) -> int:
    """``selfheal policy evaluate``: exit 1 when the learned policy is not estimated better."""
    from checkpoints.decisions import DecisionLog
    from checkpoints.exceptions import SelfhealError
    from flows.healer import policy

    cfg = config(check_estimator=False)
    lake, table = _trained(cfg)
    if table is None:
        raise SelfhealError(_UNTRAINED)
    found = policy.evaluate(cfg, table, DecisionLog(lake).decisions())
    for key in ("learned", "rules"):
        print(policy.Evaluation(**found[key]).line())
    if found["rules_measured"] is not None:
        print(f"rules measured: mean MTTR {found['rules_measured']:.2f} s over {found['rules_measured_n']} incidents")
    if not found["better"]:
        print("NOT better than the rules: keep healing.policy_mode: rules")
        return 1
    print("better than the rules: healing.policy_mode: learned will use it")
    return 0


def cli_show(args: argparse.Namespace) -> int:
    """``selfheal policy show``."""
    from checkpoints.decisions import DecisionLog
    from flows.healer import policy

    cfg = config(check_estimator=False)
    lake, table = _trained(cfg)
    if table is None:
        print(_UNTRAINED)
    else:
        print("\n".join(policy.describe(table, cfg)))
    pins = DecisionLog(lake).pins()
    for cause, remedy in sorted(pins.items()):
        print(f"pinned: {cause} -> {remedy}")
    return 0


def _allowed(cfg: SelfhealConfig, cause: str, remedy: str) -> None:
    from checkpoints.exceptions import SelfhealError

    allowed = cfg.healing.policy.get(cause)
    if allowed is None:
        raise SelfhealError(f"unknown cause {cause!r}; causes: {', '.join(sorted(cfg.healing.policy))}")
    if remedy not in allowed:
        raise SelfhealError(f"{remedy!r} is not allowed for {cause} (healing.policy.{cause}: {', '.join(allowed)})")


def cli_pin(args: argparse.Namespace) -> int:
    """``selfheal policy pin CAUSE REMEDY``."""
    from checkpoints.decisions import DecisionLog

    cfg = config(check_estimator=False)
    _allowed(cfg, args.cause, args.remedy)
    DecisionLog(open_lake(cfg)).pin(args.cause, args.remedy, _by(args.by), args.note)
    print(f"pinned: {args.cause} -> {args.remedy} (selfheal policy unpin {args.cause} to undo)")
    return 0


def cli_unpin(args: argparse.Namespace) -> int:
    """``selfheal policy unpin CAUSE``."""
    from checkpoints.decisions import DecisionLog

    cfg = config(check_estimator=False)
    log = DecisionLog(open_lake(cfg))
    if args.cause not in log.pins():
        print(f"{args.cause} is not pinned")
        return 0
    log.unpin(args.cause, _by(args.by))
    print(f"unpinned: {args.cause}")
    return 0


def cli_explore(args: argparse.Namespace) -> int:
    """``selfheal policy explore [NAME ...] [--epsilon E] [--rounds N]``."""
    import yaml

    from checkpoints.exceptions import SelfhealError
    from flows.chaos_suite.flow import MatrixFailed, SLAMissed, chaos_suite_flow, experiment_paths
    from flows.chaos_suite.report import verdict_line
    from flows.healer import policy

    if not 0 < args.epsilon <= 1:
        raise SelfhealError(f"--epsilon must be in (0, 1], got {args.epsilon:g}")
    cfg = config(check_estimator=False)
    experiment_paths(args.names)  # unknown names fail before anything starts
    source = Path(cfg.source_path) if cfg.source_path else None
    data = (yaml.safe_load(source.read_text()) or {}) if source else {}
    healing = dict(data.get("healing") or {})
    learning = dict(healing.get("learning") or {})
    healing.update(policy_mode="learned", learning={**learning, "explore_epsilon": args.epsilon}, enabled=True)
    # Next to the project's file, so its relative paths mean the same; removed after.
    overlay = (source.parent if source else Path.cwd()) / ".selfheal-policy-explore.yaml"
    overlay.write_text(yaml.safe_dump({**data, "healing": healing}, sort_keys=False))
    try:
        for n in range(args.rounds):
            state = chaos_suite_flow(names=list(args.names), config_path=str(overlay), return_state=True)
            outcome = state.result(raise_on_failure=False)
            if isinstance(outcome, SLAMissed | MatrixFailed):
                outcome = outcome.result
            if isinstance(outcome, BaseException):
                raise outcome
            print(f"round {n + 1}/{args.rounds}: {verdict_line(outcome)}")  # type: ignore[arg-type]
    finally:
        overlay.unlink(missing_ok=True)
    table = _train(cfg, open_lake(cfg))
    print("\n".join(policy.describe(table, cfg)))
    return 0
