"""``morsearch measure CONFIG.yaml --target TARGET.yaml``: measured memory and throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app
from morsearch.config import DeploymentTarget, ModelConfig, load_config, read_yaml
from morsearch.errors import ConfigError

if TYPE_CHECKING:
    from morsearch.model import MoRModel


def _load_target(config: Path, target: Path | None) -> DeploymentTarget:
    """The ``target:`` section of TARGET.yaml, else of CONFIG.yaml, else the defaults."""
    if target is not None:
        return load_config(target, DeploymentTarget, section="target")
    data, _ = read_yaml(config)
    if isinstance(data, dict) and "target" in data:
        return load_config(config, DeploymentTarget, section="target")
    return DeploymentTarget()


def _trained_for(cfg: ModelConfig, config: Path, weights: Path) -> MoRModel:
    """The trained model in ``weights``, which must be of CONFIG's model (a ConfigError names the fields)."""
    from morsearch.model import load_trained  # torch: keep `morsearch --help` instant

    model = load_trained(weights)
    if model.cfg != cfg:
        ours, theirs = cfg.model_dump(), model.cfg.model_dump()
        fields = ", ".join(f"{k}={theirs[k]!r} (CONFIG: {ours[k]!r})" for k in ours if ours[k] != theirs[k])
        raise ConfigError(
            f"{weights} holds a model other than {config}'s: {fields}; give the config it was trained from"
        )
    return model


def _shown(key: str, value: object) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{value / 2**20:,.2f} MiB"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, tuple):
        return ", ".join(_shown(key, v) for v in value)
    return str(value)


@app.command()
def measure(
    config: Annotated[Path, typer.Argument(help="Model config YAML with a top-level 'model:' section.")],
    target: Annotated[
        Path | None,
        typer.Option(help="Deployment target YAML with a top-level 'target:' section (default: CONFIG's own)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    decoder: Annotated[
        str | None,
        typer.Option(
            help="Decoder: graphed, graphed_depthwise, graphed_compiled, graphed_depthwise_compiled (the two "
            "compiled ones take about a minute per model to compile), lockstep, depthwise, depthwise_deferred "
            "or reference (default: graphed on CUDA, lockstep on CPU)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights (without --weights) and of the prompt.")] = 0,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Trained weights to measure (the model.pt of `morsearch train CONFIG`): the trained routers "
            "decide each token's depth. Default: random weights."
        ),
    ] = None,
) -> None:
    """Measure a model's memory and throughput on a deployment target (random or trained weights)."""
    from morsearch.measure import measure as run_measure  # torch: keep `morsearch --help` instant
    from morsearch.search.device_share import measuring_alone

    cfg = load_config(config, ModelConfig, section="model")
    model = cfg if weights is None else _trained_for(cfg, config, weights)
    deployment = _load_target(config, target)
    with measuring_alone(deployment):  # a search's workers training on this device wait meanwhile
        result = run_measure(model, deployment, decoder=decoder, seed=seed)
    if json_output:
        typer.echo(json.dumps({"target": deployment.model_dump(mode="json"), **result.to_dict()}))
        return
    table = Table(title=f"{config} on {deployment.name} ({result.device}, {result.dtype})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in vars(result).items():
        if key not in ("versions", "decode_seconds", "prefill_seconds"):
            table.add_row(key, _shown(key, value))
    Console().print(table)
