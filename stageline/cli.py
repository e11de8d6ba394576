"""The `stageline` command line (the daemon and run commands arrive with the daemon issue)."""

from __future__ import annotations

import click

from stageline import __version__


@click.group()
@click.version_option(__version__, prog_name="stageline")
def main() -> None:
    """stageline: durable, actor-based pipelines."""
