"""The base of every validated config: frozen, keyword-only, unknown keys refused.

Pydantic's own ``ValidationError`` is turned into a ``ConfigError`` whose message
names each bad field, its value, what is allowed and, for a typo, the nearest
valid name, so users never see a pydantic traceback.
"""

from __future__ import annotations

import difflib
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from morsearch.errors import ConfigError


def _nearest(name: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> list[tuple[tuple[Any, ...], bool, str]]:
    """One entry per problem: (field location, is-unknown-key, message with the bad value).

    Unknown keys get the nearest valid name; model-level checks may report several lines.
    """
    problems: list[tuple[tuple[Any, ...], bool, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            allowed = _field_names_at(model, loc[:-1])
            hint = _nearest(key, allowed)
            suggestion = f"did you mean '{hint}'?" if hint else f"allowed keys: {', '.join(sorted(allowed))}"
            problems.append((loc, True, f"unknown key '{key}'; {suggestion}"))
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error" and "\n" in message:  # several model-level problems
            problems += [(loc, False, line) for line in message.splitlines()]
            continue
        value = error.get("input")
        shown = "" if isinstance(value, dict) or error["type"] == "missing" else f" (got {value!r})"
        if error["type"] == "literal_error" and isinstance(value, str):
            expected = error.get("ctx", {}).get("expected", "")
            options = [part.strip().strip("'") for part in expected.replace(" or ", ", ").split(",")]
            hint = _nearest(value, options)
            if hint:
                message += f"; did you mean '{hint}'?"
        problems.append((loc, False, f"{message}{shown}"))
    return problems


def format_problem(loc: tuple[Any, ...], message: str) -> str:
    path = ".".join(str(part) for part in loc)
    return f"{path}: {message}" if path else message


def _field_names_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


class FrozenConfig(BaseModel):
    """Immutable, validated config; construction errors are ``ConfigError``."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            lines = [format_problem(loc, text) for loc, _, text in describe_validation_error(exc, type(self))]
            error = ConfigError(f"invalid {type(self).__name__}:\n  " + "\n  ".join(lines))
            error.validation_error = exc  # type: ignore[attr-defined]  # for file:line reporting
            raise error from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (``model_copy`` skips validation)."""
        return type(self)(**{**self.model_dump(exclude_unset=True), **changes})
