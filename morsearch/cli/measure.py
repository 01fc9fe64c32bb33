"""``morsearch measure CONFIG.yaml --target TARGET.yaml``: measured memory and throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app
from morsearch.config import DeploymentTarget, ModelConfig, load_config, read_yaml


def _load_target(config: Path, target: Path | None) -> DeploymentTarget:
    """The ``target:`` section of TARGET.yaml, else of CONFIG.yaml, else the defaults."""
    if target is not None:
        return load_config(target, DeploymentTarget, section="target")
    data, _ = read_yaml(config)
    if isinstance(data, dict) and "target" in data:
        return load_config(config, DeploymentTarget, section="target")
    return DeploymentTarget()


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
            help="Decoder: graphed, graphed_depthwise, graphed_compiled, lockstep, depthwise, depthwise_deferred "
            "or reference (default: graphed on CUDA, lockstep on CPU)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and prompt.")] = 0,
) -> None:
    """Measure a model's memory and throughput on a deployment target (random weights)."""
    from morsearch.measure import measure as run_measure  # torch: keep `morsearch --help` instant
    from morsearch.search.device_share import measuring_alone

    cfg = load_config(config, ModelConfig, section="model")
    deployment = _load_target(config, target)
    with measuring_alone(deployment):  # a search's workers training on this device wait meanwhile
        result = run_measure(cfg, deployment, decoder=decoder, seed=seed)
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
