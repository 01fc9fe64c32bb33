"""``morsearch search | worker | status | export``: run a study and read its results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from morsearch.cli import app
from morsearch.errors import MorsearchError

# The worker's defaults, repeated here so `--help` needs no optuna import (morsearch.search.study).
HEARTBEAT_S = 10
GRACE_S = 60

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Storage URL (sqlite:///trials/x.db, postgresql://user@host/db) or .db file; "
        "default: the space's storage, else trials/<study>.db.",
    ),
]


def _gpu_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MorsearchError(f"--gpus {text!r}: give GPU indices separated by commas, e.g. --gpus 0,1") from None


@app.command()
def search(
    space: Annotated[Path, typer.Argument(help="Search-space YAML (e.g. search_spaces/quickstart.yaml).")],
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-w", help="Worker processes on this machine; 0 only creates the study for workers elsewhere."
        ),
    ] = 1,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="GPU indices for the workers, e.g. 0,1 (workers are spread over them).")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Run a search: create the study, start the workers, show progress; run again to continue."""
    from morsearch.search.launch import launch

    console = Console()
    try:
        progress = launch(space, workers=workers, gpus=_gpu_list(gpus), storage=storage, console=console)
    except KeyboardInterrupt:
        console.print("stopped; running trials were re-enqueued: run the same command to continue")
        raise typer.Exit(130) from None
    name = progress.study_name
    console.print(f"[bold green]done[/]: {progress.complete} trials complete, Pareto front of {len(progress.front)}")
    console.print(f"next: morsearch status --study {name} · morsearch export --study {name} --trial N --out best.yaml")


@app.command()
def worker(
    study: Annotated[str, typer.Option("--study", help="Study name (the space's study_name).")],
    storage: StorageOpt = None,
    index: Annotated[int, typer.Option("--index", help="Distinct per worker: offsets the sampler's seed.")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="Training device (cuda, cuda:1, cpu); default: GPU if any.")
    ] = None,
    heartbeat: Annotated[
        int, typer.Option("--heartbeat", help="Seconds between heartbeats of this worker's running trial.")
    ] = HEARTBEAT_S,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            help="Seconds without a heartbeat after which another worker's trial counts as dead and is retried; "
            "keep it above every worker's --heartbeat.",
        ),
    ] = GRACE_S,
) -> None:
    """Join a running study from any machine and run trials until it has enough."""
    from morsearch.search.launch import run_study_worker

    try:
        summary = run_study_worker(
            storage or "", study, worker_index=index, device=device, heartbeat_interval=heartbeat, grace_period=grace
        )
    except KeyboardInterrupt:
        typer.echo("worker stopped at once; its trial was re-enqueued")
        raise typer.Exit(130) from None
    typer.echo(
        f"worker done: {summary.completed} complete, {summary.pruned} stopped early, "
        f"{summary.failed} failed, {summary.interrupted} interrupted, {summary.rejected} rejected by caps"
    )


@app.command()
def status(
    study: Annotated[str | None, typer.Option("--study", help="Study name; default: every study in the store.")] = None,
    storage: StorageOpt = None,
) -> None:
    """Per study: trials by state, the Pareto front and the best value of each objective."""
    from morsearch.config.space import format_metric
    from morsearch.search.launch import status_of

    console = Console()
    for report in status_of(storage, study):
        console.print(f"[bold]{report.study_name}[/] ({report.storage}): {report.line}")
        table = Table("objective", "direction", "best", "trial", title=f"front of {report.front_size} trials")
        for name, direction, value, number in report.best:
            table.add_row(name, direction, format_metric(name, value), str(number))
        console.print(table)


@app.command()
def export(
    study: Annotated[str, typer.Option("--study", help="Study name.")],
    trial: Annotated[int, typer.Option("--trial", help="Trial number (see morsearch status / report).")],
    out: Annotated[Path, typer.Option("--out", help="YAML file to write (a model config for morsearch train).")],
    storage: StorageOpt = None,
) -> None:
    """Write one trial's model config (with its measured objectives as metadata) to a YAML file."""
    from morsearch import store
    from morsearch.dashboard.export import export_trial

    url = store.resolve_url(storage, study)
    path = export_trial(url, study, trial, out)
    store.write_export(store.get_engine(url), study, trial, str(path.resolve()), path.read_text(encoding="utf-8"))
    typer.echo(f"wrote {path}")
