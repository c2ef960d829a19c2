"""The ``selfheal`` command: one module per command group, each command's arguments next to its handler."""

from flows.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
