"""The ``selfheal`` command line: every command's help, dispatch, error translation, a light ``--help``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from checkpoints.exceptions import SelfhealError
from flows.cli import build_parser, main
from flows.cli.chaos import cli_chaos_run
from flows.cli.lake import cli_status as lake_status
from flows.cli.local import cli_watch_landing
from flows.cli.main import _run
from flows.config import ConfigError


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``parser`` (``()`` is ``selfheal`` itself)."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = _commands(build_parser())
GROUPS = [
    "demo",
    "data",
    "lake",
    "pipeline",
    "score",
    "dlq",
    "monitor",
    "serve",
    "heal",
    "incidents",
    "policy",
    "up",
    "down",
    "release",
    "gitops",
    "chaos",
]


def test_every_group_is_listed_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    positions = [out.index(f"\n    {group} ") for group in GROUPS]
    assert positions == sorted(positions)
    assert "watch-landing" not in out  # a process of `selfheal up`, not a command for people
    assert {c[0] for c in COMMANDS if c} == {*GROUPS, "watch-landing"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "selfheal")
def test_every_command_prints_its_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(" ".join(("usage: selfheal", *command)))


def test_no_command_prints_the_help_and_a_group_needs_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: selfheal")
    with pytest.raises(SystemExit) as done:
        main(["lake"])
    assert done.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_only_the_commands_that_run_flows_get_the_in_process_settings() -> None:
    parse = build_parser().parse_args
    assert parse(["chaos", "run"]).handler.__wrapped__ is cli_chaos_run
    assert parse(["lake", "status"]).handler is lake_status
    assert parse(["watch-landing", "incoming"]).handler is cli_watch_landing


def test_our_errors_become_one_line_and_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: argparse.Namespace) -> int:
        raise SelfhealError("the lake is gone")

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert _run(fails, argparse.Namespace()) == 1
    assert capsys.readouterr().err == "selfheal: error: the lake is gone\n"
    assert _run(interrupted, argparse.Namespace()) == 130
    assert _run(lambda args: None, argparse.Namespace()) == 0


def test_help_imports_no_heavy_library() -> None:
    script = (
        "import json, sys\n"
        "from flows.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    loaded = {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}
    assert not loaded & {"prefect", "mlflow", "pandas", "pyarrow", "deltalake", "sklearn", "checkpoints"}


def test_a_config_mistake_exits_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def misconfigured(args: argparse.Namespace) -> int:
        raise ConfigError("selfheal.yaml: invalid configuration\n  gate.metric: unknown\n  data.target: missing")

    assert _run(misconfigured, argparse.Namespace()) == 2  # base: 1, like any other error
    assert capsys.readouterr().err == (
        "selfheal: error: selfheal.yaml: invalid configuration; gate.metric: unknown; data.target: missing\n"
    )
