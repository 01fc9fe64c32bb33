"""The ``morsearch`` command: a thin typer app over the library's functions.

Each command lives in a module of this package and registers itself on ``app``;
user errors (``MorsearchError``) are printed once, without a traceback, unless
``MORSEARCH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from morsearch.errors import MorsearchError

app = typer.Typer(
    name="morsearch",
    help="Find the Mixture-of-Recursions transformer that fits your deployment target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Find the Mixture-of-Recursions transformer that fits your deployment target."""


# Command modules register on ``app`` when imported (kept below ``app`` on purpose).
from morsearch.cli import dashboard, describe, measure, search, train, validate  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except MorsearchError as exc:
        if os.environ.get("MORSEARCH_DEBUG") == "1":
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
