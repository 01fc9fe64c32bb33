"""Read YAML into validated configs, with errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from morsearch.config.base import describe_validation_error, format_problem
from morsearch.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return the data and its node tree (for line numbers)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return data, node


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest existing ancestor if absent)."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
            if node is None:
                # point at the key itself when the error is about an unknown key
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


def key_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line of the key at ``loc`` itself (for unknown-key errors)."""
    parent = node
    for part in loc[:-1]:
        if not isinstance(parent, yaml.MappingNode):
            return line_of(node, loc)
        parent = next((v for k, v in parent.value if k.value == str(part)), None)
    if isinstance(parent, yaml.MappingNode):
        for key, _ in parent.value:
            if key.value == str(loc[-1]):
                return key.start_mark.line + 1
    return line_of(node, loc)


def validation_problems(
    exc: ValidationError, cls: type[BaseModel], path: Path, node: yaml.Node | None, prefix: tuple[Any, ...] = ()
) -> list[str]:
    """Each pydantic error as ``file:line: field.path: message``."""
    problems = []
    for error_loc, unknown_key, text in describe_validation_error(exc, cls):
        loc = prefix + error_loc
        line = key_line(node, loc) if unknown_key else line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        problems.append(f"{where}: {format_problem(loc, text)}")
    return problems


def load_config(path: str | Path, cls: type[ConfigT], *, section: str | None = None) -> ConfigT:
    """Load ``cls`` from a YAML file (or from its top-level ``section``)."""
    path = Path(path)
    data, node = read_yaml(path)
    prefix: tuple[Any, ...] = ()
    if section is not None:
        if not isinstance(data, dict) or section not in data:
            raise ConfigError(f"{path}: needs a top-level '{section}:' mapping")
        data, prefix = data[section], (section,)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    try:
        return cls(**data)
    except ConfigError as error:
        exc = getattr(error, "validation_error", None)
        if exc is None:
            raise
        problems = validation_problems(exc, cls, path, node, prefix)
        raise ConfigError(f"{path}: invalid {cls.__name__}:\n  " + "\n  ".join(problems)) from None
