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


def _load_budget(
    config: Path, budget_file: Path | None, value: float | None, seed: int | None, compile_model: bool | None
) -> TrainBudget:
    source = budget_file or config
    if not _section(source, "budget"):
        raise ConfigError(
            f"{source}: no 'budget:' section; add one (kind, value, batch_size, seq_len, ...) "
            "or pass --budget FILE with one (a search space YAML works)"
        )
    budget = load_config(source, TrainBudget, section="budget")
    overrides = {"value": value, "seed": seed, "compile": compile_model}
    return budget.replace(**{name: v for name, v in overrides.items() if v is not None})


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0 (got {value:g}); it is the budget's size in units of its kind")
    return value


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
        float | None,
        typer.Option(help="Override the budget's value, > 0 (e.g. 10x the proxy's FLOPs).", callback=_positive),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the budget's seed (model init and batch order).")] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="Override the budget's compile (torch.compile the model)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cuda, cpu or auto.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt when it exists.")] = True,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.", min=1)] = 500,
    json_output: Annotated[bool, typer.Option("--json", help="Print the final metrics as one JSON object.")] = False,
) -> None:
    """Train one model config at full budget: progress, checkpoints, resume, final metrics as JSON."""
    from morsearch.train.full import train_full  # torch + Lightning: keep `morsearch --help` instant

    model_config = load_config(config, ModelConfig, section="model")
    budget = _load_budget(config, budget_file, value, seed, compile_model)
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
