"""``morsearch validate SPACE.yaml``: check a search space before any worker starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app


@app.command()
def validate(
    space: Annotated[
        Path, typer.Argument(help="Search-space YAML file (see search_spaces/ and docs/SEARCH_SPACE.md).")
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Check a search space and list every problem (file:line, field, value, fix); exit 2 if any."""
    from morsearch.search.space import check_search_space

    report = check_search_space(space)
    s = report.space
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "study_name": s.study_name,
                    "storage": s.storage_url,
                    "n_trials": s.n_trials,
                    "objectives": [[o.metric, o.direction] for o in s.objectives],
                    "constraints": [c.text for c in s.constraints],
                    "searched": list(s.searched),
                    "sampler": s.sampler.name,
                    "baselines": report.baselines,
                    "missing_baselines": report.missing_baselines,
                    "invalid_share": report.invalid_share,
                    "capped_share": report.capped_share,
                    "steps": report.steps,
                    "warnings": report.warnings,
                }
            )
        )
        return
    console = Console()
    console.print(f"[bold green]ok[/] {space}: study '{s.study_name}', {s.n_trials} trials, store {s.storage_url}")
    console.print("objectives: " + ", ".join(f"{o.metric} ({o.direction})" for o in s.objectives))
    if s.constraints:
        console.print("constraints: " + ", ".join(c.text for c in s.constraints))
    table = Table(title="searched parameters")
    table.add_column("parameter")
    table.add_column("values")
    table.add_column("when")
    for name, spec in s.searched.items():
        if spec.kind == "categorical":
            values = ", ".join(str(c) for c in spec.choices or [])
        else:
            values = f"{spec.kind} {spec.low} .. {spec.high}" + (" log" if spec.log else "")
            values += f" step {spec.step}" if spec.step else ""
        when = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in (spec.when or {}).items())
        table.add_row(name, values, when)
    console.print(table)
    fixed = {name: spec.value for name, spec in s.model.items() if spec.kind == "fixed"}
    console.print("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    console.print(f"sampler: {s.sampler.name}; baselines first: {', '.join(report.baselines) or 'none'}")
    console.print(
        f"random samples: {report.invalid_share:.0%} not valid models, {report.capped_share:.0%} rejected by caps"
    )
    if report.steps:
        console.print(f"training per trial: {report.steps[0]} to {report.steps[1]} optimizer steps")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
