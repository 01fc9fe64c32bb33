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


def describe_validation_error(exc: ValidationError, model: type[BaseModel], where: str = "") -> list[str]:
    """One line per problem: ``path: message (got value)`` plus a suggestion for typos."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        prefix = f"{where}{path}" if path else where.rstrip(".: ") or type_name(model)
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            allowed = _field_names_at(model, error["loc"][:-1])
            hint = _nearest(key, allowed)
            suggestion = f"; did you mean '{hint}'?" if hint else f"; allowed keys: {', '.join(sorted(allowed))}"
            lines.append(f"{prefix}: unknown key '{key}'{suggestion}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error" and "\n" in message:  # several model-level problems
            lines += [f"{where}{line}" for line in message.splitlines()]
            continue
        value = error.get("input")
        shown = "" if isinstance(value, dict) or error["type"] == "missing" else f" (got {value!r})"
        if error["type"] == "literal_error" and isinstance(value, str):
            expected = error.get("ctx", {}).get("expected", "")
            options = [part.strip().strip("'") for part in expected.replace(" or ", ", ").split(",")]
            hint = _nearest(value, options)
            if hint:
                message += f"; did you mean '{hint}'?"
        lines.append(f"{prefix}: {message}{shown}")
    return lines


def type_name(model: type[BaseModel]) -> str:
    return model.__name__


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
            lines = describe_validation_error(exc, type(self))
            raise ConfigError(f"invalid {type(self).__name__}:\n  " + "\n  ".join(lines)) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (``model_copy`` skips validation)."""
        return type(self)(**{**self.model_dump(exclude_unset=True), **changes})
