"""``morsearch train CONFIG.yaml``: train one configuration at full budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app
from morsearch.config import DataConfig, ModelConfig, TrainBudget, load_config, read_yaml
from morsearch.errors import ConfigError


def _section(path: Path, name: str) -> bool:
    data, _ = read_yaml(path)
    return isinstance(data, dict) and name in data


def _load_budget(config: Path, budget_file: Path | None, value: float | None) -> TrainBudget:
    source = budget_file or config
    if not _section(source, "budget"):
        raise ConfigError(
            f"{source}: no 'budget:' section; add one (kind, value, batch_size, seq_len, ...) "
            "or pass --budget FILE with one (a search space YAML works)"
        )
    budget = load_config(source, TrainBudget, section="budget")
    return budget.replace(value=value) if value is not None else budget


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Model config YAML: 'model:', optional 'budget:' and 'data:'.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for checkpoints, model.pt, metrics.json (default: trials/train/NAME).")
    ] = None,
    budget_file: Annotated[
        Path | None, typer.Option("--budget", help="YAML whose 'budget:' section to use (default: CONFIG's own).")
    ] = None,
    value: Annotated[
        float | None, typer.Option(help="Override the budget's value (e.g. 10x the proxy's FLOPs).", min=0)
    ] = None,
    device: Annotated[str, typer.Option(help="cuda, cpu or auto.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt when it exists.")] = True,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.", min=1)] = 500,
    json_output: Annotated[bool, typer.Option("--json", help="Print the final metrics as one JSON object.")] = False,
) -> None:
    """Train one model config at full budget: progress, checkpoints, resume, final metrics as JSON."""
    from morsearch.train.full import train_full  # torch + Lightning: keep `morsearch --help` instant

    model_config = load_config(config, ModelConfig, section="model")
    budget = _load_budget(config, budget_file, value)
    data = load_config(config, DataConfig, section="data") if _section(config, "data") else DataConfig()
    out_dir = out or Path("trials") / "train" / config.stem
    result = train_full(
        model_config,
        budget,
        data,
        out_dir,
        resume=resume,
        device=device,
        checkpoint_every=checkpoint_every,
        progress=not json_output,
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{config}: {result.steps} steps, {result.tokens_seen:,} tokens")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("val_nll", "val_perplexity", "val_accuracy", "training_flops", "train_tokens_per_s", "seconds"):
        table.add_row(key, f"{getattr(result, key):,.4g}")
    table.add_row("routing (share per step)", ", ".join(f"{share:.3f}" for share in result.routing))
    table.add_row("weights", result.model_path)
    table.add_row("metrics", str(Path(out_dir) / "metrics.json"))
    Console().print(table)
