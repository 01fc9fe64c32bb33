"""``morsearch report`` (static HTML) and ``morsearch dashboard`` (live web app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from morsearch.cli import app
from morsearch.errors import StorageError

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Study store: sqlite:///path.db, a .db file or postgresql://user@host/db "
        "(default: trials/STUDY.db). Opened read-only.",
    ),
]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name (may be omitted when the store has one).")]


def _storage_url(storage: str | None, study: str | None) -> str:
    from morsearch.store import resolve_url

    if storage is None and study is None:
        raise StorageError("pass --storage URL (and --study NAME when the store holds several studies)")
    return resolve_url(storage, study or "")


@app.command()
def report(
    storage: StorageOpt = None,
    study: StudyOpt = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: dashboards/STUDY.html).")] = None,
) -> None:
    """Write a self-contained HTML report of a study: fronts, hypervolume, choices, the front's trials."""
    from morsearch.dashboard.export import safe_stem
    from morsearch.dashboard.report import write_report
    from morsearch.search.results import open_study

    url = _storage_url(storage, study)
    if study is None:  # resolve the only study now, to name the default output file
        view = open_study(url)
        study = view.name
        view.close()
    path = write_report(url, study, out or Path("dashboards") / f"{safe_stem(study)}.html")
    Console().print(f"report written: {path} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    study: StudyOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8050,
    export_dir: Annotated[Path, typer.Option(help="Folder the Export button writes config files into.")] = Path(
        "exports"
    ),
) -> None:
    """Serve the live dashboard: fronts refresh as trials finish; filter, inspect and export trials."""
    from morsearch.dashboard.app import serve

    console = Console()
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]warning:[/] serving on {host}: anyone who can reach this port can read the study "
            "and write exports; use an SSH tunnel to share it instead",
            highlight=False,
        )
    url = _storage_url(storage, study)
    console.print("opening the store ...", highlight=False)
    serve(
        url,
        host=host,
        port=port,
        export_dir=export_dir,
        study=study,
        on_ready=lambda address: console.print(f"dashboard at {address}; Ctrl-C to stop", highlight=False),
        on_warm=lambda line: console.print(line, highlight=False),
    )
