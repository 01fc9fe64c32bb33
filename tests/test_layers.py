"""The import direction of ARCHITECTURE.md: lower layers never import higher ones, and the
light layers stay free of heavy third-party packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "morsearch"

# layer -> morsearch layers it may import (errors is open to everyone)
ALLOWED = {
    "errors": set(),
    "config": set(),
    "model": {"config"},
    "data": {"config"},
    "train": {"config", "model", "data"},
    "measure": {"config", "model"},
    "store": {"config"},
    "search": {"config", "model", "data", "train", "measure", "store", "search"},
    "dashboard": {"config", "store", "search.results", "dashboard"},
    "cli": {"config", "model", "data", "train", "measure", "store", "search", "dashboard", "cli"},
}
FORBIDDEN_EXTERNAL = {
    "errors": {"torch", "lightning", "pytorch_lightning", "optuna", "sqlalchemy", "plotly", "pydantic"},
    "config": {"torch", "lightning", "pytorch_lightning", "optuna", "sqlalchemy", "plotly"},
    "model": {"lightning", "pytorch_lightning", "optuna", "sqlalchemy", "plotly"},
    "data": {"optuna", "sqlalchemy", "plotly"},
    "train": {"optuna", "sqlalchemy", "plotly"},
    "measure": {"lightning", "pytorch_lightning", "optuna", "sqlalchemy", "plotly"},
    "store": {"torch", "lightning", "pytorch_lightning", "plotly"},
    "search": {"plotly"},
    "dashboard": {"torch", "lightning", "pytorch_lightning"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" and parts[0] != "__main__" else "cli"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.stem in ("__init__", "__main__"):
            continue  # the package root re-exports the public API
        yield path


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_the_layers(path):
    layer = _layer_of(path)
    allowed = ALLOWED[layer] | {layer, "errors"}
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "morsearch":
            parts = name.split(".")
            if len(parts) < 2:
                continue
            target = parts[1]
            dotted = ".".join(parts[1:3])
            ok = target in allowed or dotted in allowed or any(dotted.startswith(a + ".") for a in allowed)
            assert ok, f"{path.relative_to(PACKAGE)} ({layer}) imports {name}"
        else:
            assert top not in FORBIDDEN_EXTERNAL.get(layer, set()), (
                f"{path.relative_to(PACKAGE)} ({layer}) imports {top}"
            )
