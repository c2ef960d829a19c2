"""What every command module uses to add its commands: a parser per command with its handler bound.

A command module's top level imports nothing heavy: ``selfheal --help`` builds every
parser, so Prefect, MLflow, pandas and the lake load inside the handlers, when a
command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from flows.config import SelfhealConfig

Handler: TypeAlias = Callable[[argparse.Namespace], "int | None"]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def config(*, check_estimator: bool = True) -> SelfhealConfig:
    """The configuration the command runs with (``--config``, ``$SELFHEAL_CONFIG`` or ./selfheal.yaml).

    ``check_estimator=False`` skips importing ``trainer.estimator`` (scikit-learn) for commands that train nothing.
    """
    from flows.config import load_config  # imports the lake (pyarrow, pandas): only when a command runs

    return load_config(check_estimator=check_estimator)


def _in_process_runs(handler: Handler, on_demand: bool = False) -> Handler:
    """``handler`` inside selfheal's settings for in-process flow runs (``flows.prefect_runs``).

    A command with ``--prefect`` given also sends its events without a configured API
    (``flows.events.local_server_events``: Prefect starts its ephemeral server).
    """

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int | None:
        from flows.events import local_server_events
        from flows.prefect_runs import in_process_runs  # imports Prefect: only commands that run flows pay

        asked = getattr(args, "prefect", False)
        # Commands that run a flow only sometimes defer Prefect's import to that flow (flow_settings).
        with in_process_runs(defer=on_demand), local_server_events() if asked else contextlib.nullcontext():
            return handler(args)

    return run


@dataclass(frozen=True)
class Commands:
    """The commands a module adds to one ``COMMAND`` choice.

    Attributes:
        sub: the sub-parsers action the commands are added to.
        runs_flows: the handlers run Prefect flows in this process, so they get
            ``flows.prefect_runs.in_process_runs()``; the others never import Prefect.
        flows_on_demand: with ``runs_flows``, the handlers run a flow only sometimes and
            enter ``flows.prefect_runs.flow_settings()`` before one, so Prefect is
            imported only then (a one-shot monitor pass or healer tick never loads it).
    """

    sub: Subparsers
    runs_flows: bool = False
    flows_on_demand: bool = False

    def add(
        self, name: str, handler: Handler, help_text: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        """Add command ``name`` (``description`` defaults to ``help_text``) that runs ``handler``."""
        parser = self.sub.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=_in_process_runs(handler, self.flows_on_demand) if self.runs_flows else handler)
        return parser

    def group(self, name: str, help_text: str, description: str) -> Commands:
        """Add ``name`` as a group whose own sub-command is required (``selfheal lake status``)."""
        parser = self.sub.add_parser(
            name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        return self.below(parser, f"{name} commands", required=True)

    def below(self, parser: argparse.ArgumentParser, title: str, required: bool) -> Commands:
        """Commands one level below ``parser``, listed under ``title`` in its help."""
        subparsers = parser.add_subparsers(title=title, metavar="COMMAND", required=required)
        return Commands(subparsers, self.runs_flows, self.flows_on_demand)
