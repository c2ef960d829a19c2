"""The ``selfheal`` command: one module per command group, each command's arguments next to its handler."""

from flows.cli.main import main

__all__ = ["main"]
