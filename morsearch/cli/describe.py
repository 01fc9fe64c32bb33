"""``morsearch describe CONFIG.yaml``: the accounting of one model config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app
from morsearch.config import ModelConfig, load_config


def _human(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


@app.command()
def describe(
    config: Annotated[Path, typer.Argument(help="Model config YAML with a top-level 'model:' section.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    seq_len: Annotated[
        int | None, typer.Option(help="Context length for FLOPs (default: the model's max_seq_len).", min=1)
    ] = None,
) -> None:
    """Print a model's parameters, FLOPs per token and KV-cache bytes per token."""
    from morsearch.model import sizing  # torch-free, but keep `morsearch --help` instant

    cfg = load_config(config, ModelConfig, section="model")
    accounting = sizing.describe(cfg, seq_len=seq_len)
    if json_output:
        typer.echo(json.dumps({"config": cfg.model_dump(mode="json"), **accounting}))
        return
    table = Table(title=f"{config}  ({cfg.sharing}, Nr={cfg.num_recursions}, router={cfg.router})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in accounting.items():
        shown = _human(value) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
        table.add_row(key, shown)
    Console().print(table)
