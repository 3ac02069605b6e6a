"""The `lmforge` command line: one module per group of subcommands."""

from lmforge.cli.main import main

__all__ = ["main"]
