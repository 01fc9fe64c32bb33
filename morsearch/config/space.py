"""``SearchSpace``: the YAML schema of a search (what to vary, what to optimise, how).

A search-space file has these top-level sections (docs/SEARCH_SPACE.md is the
reference; every field below carries its description):

    study_name, n_trials, seed, storage     what and where
    objectives, constraints, reference_point  what to optimise, with units
    model                                   ModelConfig fields: fixed, choices or ranges
    budget, data, target                    TrainBudget, DataConfig, DeploymentTarget
    sampler, early_stopping, baselines      how the study searches

The ``model`` section is the design space. Its keys are read from
``ModelConfig.model_fields`` (plus the sizing knobs of
``ModelConfig.from_param_budget``), and each value is validated against that
field's own type, so adding a field to ``ModelConfig`` makes it searchable with
no change here. A parameter is one of:

    num_layers: 8                          fixed value
    router: [none, expert_choice]          choices (a bare list is a shorthand)
    router: {choices: [none, expert_choice]}
    params_unique: {low: 100k, high: 1M, log: true}   int range (units allowed)
    router_alpha: {low: 0.05, high: 0.5, log: true, when: {router: expert_choice}}

``when`` makes a parameter conditional: it is suggested only while every named
parameter takes one of the listed values, and otherwise keeps ModelConfig's
default. Conditions may name fixed or categorical parameters only.

Imports no optuna: turning this schema into Optuna distributions is the search
layer's job (``morsearch.search.distributions``).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from morsearch.config.base import FrozenConfig, describe_validation_error
from morsearch.config.budget import TrainBudget
from morsearch.config.data import DataConfig
from morsearch.config.model import ModelConfig
from morsearch.config.target import DeploymentTarget

# --- metrics ------------------------------------------------------------------------------

MetricName = Literal[
    "val_nll",
    "peak_memory",
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "latency_p90_ms",
    "params_unique",
    "kv_cache_bytes",
]
Direction = Literal["minimize", "maximize"]
UnitKind = Literal["nll", "bytes", "tokens/s", "ms", "count"]


@dataclass(frozen=True)
class Metric:
    """What one named metric means, where the worker reads it, and which way is better.

    Attributes:
        direction: ``minimize`` or ``maximize``; an objective always uses this direction.
        unit: How constraint bounds are written (``bytes`` accepts ``2GiB``, ``count`` ``120M``).
        source: Where the value comes from (``ProxyResult.val_nll``, ``Measurement.<field>``
            or the model config).
        description: One line for docs, CLI and dashboard.
    """

    direction: Direction
    unit: UnitKind
    source: str
    description: str


METRICS: dict[str, Metric] = {
    "val_nll": Metric("minimize", "nll", "ProxyResult.val_nll", "Validation negative log-likelihood (nats/token)."),
    "peak_memory": Metric(
        "minimize", "bytes", "Measurement.peak_memory_bytes", "Peak inference memory on the target: weights + growth."
    ),
    "decode_tokens_per_s": Metric(
        "maximize", "tokens/s", "Measurement.decode_tokens_per_s", "Generated tokens per second, whole batch."
    ),
    "prefill_tokens_per_s": Metric(
        "maximize", "tokens/s", "Measurement.prefill_tokens_per_s", "Prompt tokens processed per second."
    ),
    "latency_p90_ms": Metric(
        "minimize", "ms", "Measurement.latency_p90_ms", "90th percentile time between two tokens of a sequence."
    ),
    "params_unique": Metric(
        "minimize", "count", "ModelConfig.unique_parameters()", "Distinct parameters (tied weights once)."
    ),
    "kv_cache_bytes": Metric(
        "minimize", "bytes", "Measurement.kv_cache_bytes", "KV-cache bytes held at the end of generation."
    ),
}

_UNITS: dict[str, dict[str, float]] = {
    "nll": {"": 1.0},
    "bytes": {
        "": 1.0,
        "b": 1.0,
        "kb": 1e3,
        "mb": 1e6,
        "gb": 1e9,
        "tb": 1e12,
        "kib": 2.0**10,
        "mib": 2.0**20,
        "gib": 2.0**30,
        "tib": 2.0**40,
    },
    "tokens/s": {"": 1.0, "k": 1e3, "M": 1e6},
    "ms": {"": 1.0, "us": 1e-3, "ms": 1.0, "s": 1e3},
    "count": {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12},
}
_UNITS_SHOWN: dict[str, list[str]] = {
    "nll": ["(none)"],
    "bytes": ["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"],
    "tokens/s": ["k", "M"],
    "ms": ["us", "ms", "s"],
    "count": ["k", "M", "G", "B", "T"],
}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z/]*)\s*$")


def parse_quantity(text: str | float, unit: UnitKind) -> float:
    """``"2GiB"`` -> 2147483648.0 for ``bytes``; ``"120M"`` -> 1.2e8 for ``count``.

    Byte units are case-insensitive (``KB`` = 1000, ``KiB`` = 1024); count units are
    ``k``/``K``, ``M``, ``G`` or ``B`` (billion), ``T``.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a number, got {text!r}")
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a number with an optional unit, e.g. 2GiB or 120M")
    suffix = match.group(2)
    scales = _UNITS[unit]
    key = suffix.lower() if unit == "bytes" else suffix
    if key not in scales:
        allowed = ", ".join(repr(s) for s in _UNITS_SHOWN[unit])
        raise ValueError(f"unknown unit '{suffix}' for a {unit} quantity; allowed: {allowed}")
    return float(Decimal(match.group(1)) * Decimal(repr(scales[key])))  # 0.12 x 1e9 stays whole


_BINARY_BYTES = [("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)]
_COUNTS = [("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)]


def format_metric(name: str, value: float) -> str:
    """A metric's value for people: peak_memory ``1101004.8`` -> ``"1.05 MiB"``, params ``2.41e6`` -> ``"2.41M"``.

    Bytes and counts are written so that ``parse_quantity`` reads them back (to 3
    digits); a name outside ``METRICS`` keeps 6 digits and no unit.
    """
    if name not in METRICS:
        return f"{value:.6g}"
    unit = METRICS[name].unit
    if unit in ("bytes", "count"):
        scales = _BINARY_BYTES if unit == "bytes" else _COUNTS
        suffix, scale = next(((s, f) for s, f in scales if abs(value) >= f), ("B" if unit == "bytes" else "", 1.0))
        scaled = value / scale
        decimals = max(0, 2 - math.floor(math.log10(abs(scaled)))) if scale > 1 else 0  # 3 digits
        return f"{scaled:.{decimals}f}" + (f" {suffix}" if unit == "bytes" else suffix)
    if unit == "nll":
        return f"{value:.4f} nats/token"
    if unit == "tokens/s":
        return f"{value:,.0f} tokens/s" if abs(value) >= 100 else f"{value:.3g} tokens/s"
    return f"{value:.3g} {unit}"


def _nearest(name: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(name: str, candidates: list[str]) -> str:
    hint = _nearest(name, candidates)
    return f"did you mean '{hint}'?" if hint else f"allowed: {', '.join(candidates)}"


class Objective(FrozenConfig):
    """One objective: a named metric and its direction (fixed by the metric)."""

    metric: MetricName = Field(description="Metric to optimise; see the metrics table.")
    direction: Direction = Field(description="minimize or maximize; must match the metric's natural direction.")

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        # "val_nll" or {"val_nll": "minimize"} besides {metric: ..., direction: ...}
        if isinstance(data, str):
            metric = METRICS.get(data)
            return {"metric": data, "direction": metric.direction if metric else "minimize"}
        if isinstance(data, dict) and len(data) == 1 and "metric" not in data:
            ((name, direction),) = data.items()
            return {"metric": name, "direction": direction}
        return data

    @model_validator(mode="after")
    def _natural_direction(self) -> Objective:
        natural = METRICS[self.metric].direction
        if self.direction != natural:
            raise ValueError(f"{self.metric} can only be {natural}d (got {self.direction}); write '{self.metric}'")
        return self


ConstraintOp = Literal["<=", ">="]


class Constraint(FrozenConfig):
    """A cap on a metric, e.g. ``peak_memory <= 2GiB``; written as one string in YAML.

    Set on each trial through Optuna's ``trial.set_constraint(name, violation)``;
    a configuration whose analytic lower bound already breaks a cap is rejected
    before training (``morsearch.search.violates_caps``).
    """

    metric: MetricName = Field(description="Metric the cap applies to.")
    op: ConstraintOp = Field(description="<= (an upper cap) or >= (a floor).")
    bound: float = Field(description="The cap in the metric's base unit (bytes, parameters, tokens/s, ms).")
    text: str = Field(description="The constraint as written; also its name in Optuna.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        match = re.match(r"^\s*([A-Za-z_0-9]+)\s*(<=|>=|<|>|==|=)\s*(.+?)\s*$", data)
        if not match:
            raise ValueError(
                f"'{data}' is not '<metric> <= <value>' or '<metric> >= <value>' (e.g. params_unique <= 1M)"
            )
        name, op, value = match.groups()
        if name not in METRICS:
            raise ValueError(f"unknown metric '{name}' in '{data}'; {_did_you_mean(name, list(METRICS))}")
        if op not in ("<=", ">="):
            raise ValueError(f"operator '{op}' in '{data}': use <= or >= (a cap includes its bound)")
        bound = parse_quantity(value, METRICS[name].unit)
        return {"metric": name, "op": op, "bound": bound, "text": f"{name} {op} {value}"}

    @property
    def name(self) -> str:
        """The key passed to ``trial.set_constraint``."""
        return self.text

    def violation(self, value: float) -> float:
        """Optuna's constraint value: > 0 means violated, by that much (in base units)."""
        return value - self.bound if self.op == "<=" else self.bound - value


# --- the model section: one spec per ModelConfig field --------------------------------------

_KNOB_DESCRIPTIONS: dict[str, str] = {
    "params_unique": "Unique-parameter budget; d_model, num_heads, num_kv_heads and ffn_dim are derived from it "
    "(ModelConfig.from_param_budget). Units allowed: 500k, 120M.",
    "head_dim": "With params_unique: channels per attention head.",
    "kv_group_size": "With params_unique: query heads per KV head (grouped-query attention).",
    "ffn_ratio": "With params_unique: target ffn_dim / d_model.",
    "tolerance": "With params_unique: accepted relative miss of the budget.",
}
# Fields that params_unique derives; giving them too is an error.
DERIVED_BY_BUDGET = ("d_model", "num_heads", "num_kv_heads", "ffn_dim")


def _sizing_knobs() -> dict[str, tuple[Any, FieldInfo]]:
    """The keyword arguments of ``ModelConfig.from_param_budget`` as (type, FieldInfo)."""
    signature = inspect.signature(ModelConfig.from_param_budget)
    hints = get_type_hints(ModelConfig.from_param_budget)
    knobs: dict[str, tuple[Any, FieldInfo]] = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind == parameter.VAR_KEYWORD or name in ModelConfig.model_fields:
            continue
        default = None if parameter.default is parameter.empty else parameter.default  # params_unique: optional
        knobs[name] = (hints[name], Field(default, gt=0, description=_KNOB_DESCRIPTIONS[name]))
    return knobs


SIZING_KNOBS: dict[str, tuple[Any, FieldInfo]] = _sizing_knobs()


def searchable_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """Every key the ``model`` section accepts: ModelConfig's fields, then the sizing knobs."""
    fields = {name: (info.annotation, info) for name, info in ModelConfig.model_fields.items()}
    return {**fields, **SIZING_KNOBS}


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; other annotations unchanged."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not Literal and len(args) == 1 and type(None) in get_args(annotation):
        return args[0]
    return annotation


def numeric_type(annotation: Any) -> type | None:
    """int or float when the field is a number (optionally None), else None."""
    base = _base_type(annotation)
    return base if base in (int, float) else None


def literal_choices(annotation: Any) -> list[Any] | None:
    """The values of a ``Literal`` field (optionally None), else None."""
    base = _base_type(annotation)
    return list(get_args(base)) if get_origin(base) is Literal else None


ParamKind = Literal["fixed", "categorical", "int", "float"]


class ParamSpec(FrozenConfig):
    """One entry of the ``model`` section: a fixed value, a set of choices or a numeric range."""

    value: Any = Field(None, description="Fixed value (a bare scalar in YAML is a shorthand for this).")
    choices: list[Any] | None = Field(None, description="Categorical choices (a bare list is a shorthand).")
    low: int | float | str | None = Field(None, description="Lower bound of a range (inclusive); units allowed.")
    high: int | float | str | None = Field(None, description="Upper bound of a range (inclusive); units allowed.")
    step: float | None = Field(None, gt=0, description="Range step (ints default to 1); not with log.")
    log: bool = Field(False, description="Sample the range on a log scale.")
    when: dict[str, list[Any]] | None = Field(
        None, description="Condition: suggested only while each named parameter takes one of these values."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"choices": data}
        if not isinstance(data, dict):
            return {"value": data}
        if isinstance(data.get("when"), dict):
            data = {**data, "when": {k: v if isinstance(v, list) else [v] for k, v in data["when"].items()}}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> ParamSpec:
        is_range = self.low is not None or self.high is not None
        forms = [self.is_fixed, self.choices is not None, is_range]
        if sum(forms) != 1:
            given = [n for n, f in zip(("value", "choices", "low/high"), forms, strict=True) if f]
            raise ValueError(f"give exactly one of value, choices or low/high (a range), got {given or 'none'}")
        if is_range and (self.low is None or self.high is None):
            raise ValueError("a range needs both low and high")
        if not is_range and (self.step is not None or self.log):
            raise ValueError("step and log apply to ranges (low/high) only")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty; give at least one value")
        if self.log and self.step is not None:
            raise ValueError("a log range cannot have a step; remove step or log")
        return self

    @property
    def is_fixed(self) -> bool:
        """A fixed value, ``null`` included (``router_gate: null`` keeps the router's default gate)."""
        given_null = "value" in self.model_fields_set and self.choices is None and self.low is None
        return self.value is not None or (given_null and self.high is None)

    @property
    def kind(self) -> ParamKind:
        """fixed, categorical, int or float (ranges take the type of their bounds)."""
        if self.is_fixed:
            return "fixed"
        if self.choices is not None:
            return "categorical"
        is_int = all(isinstance(v, int) for v in (self.low, self.high)) and (
            self.step is None or float(self.step).is_integer()
        )
        return "int" if is_int else "float"

    def possible_values(self) -> list[Any] | None:
        """Values a fixed or categorical parameter can take (None for ranges)."""
        if self.is_fixed:
            return [self.value]
        return list(self.choices) if self.choices is not None else None

    def is_active(self, values: dict[str, Any]) -> bool:
        """Whether the condition holds for the values chosen so far."""
        return all(name in values and values[name] in allowed for name, allowed in (self.when or {}).items())


class _ErrorList:
    """Duck-types ``ValidationError.errors()`` so single errors can be described."""

    def __init__(self, errors: list[Any]) -> None:
        self._errors = errors

    def errors(self) -> list[Any]:
        return self._errors


def _config_class(name: str, root: type[FrozenConfig] = FrozenConfig) -> type[FrozenConfig] | None:
    for sub in root.__subclasses__():
        if sub.__name__ == name:
            return sub
        found = _config_class(name, sub)
        if found is not None:
            return found
    return None


def flatten_errors(
    exc: ValidationError, cls: type[FrozenConfig], prefix: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], bool, str]]:
    """Like ``describe_validation_error``, but into nested configs.

    A nested ``FrozenConfig`` raises ``ConfigError`` from its ``__init__``, which
    pydantic wraps as one multi-line value error of the parent field; this
    unwraps it so each problem keeps its own field path (and so its YAML line).
    """
    problems: list[tuple[tuple[Any, ...], bool, str]] = []
    for error in exc.errors():
        loc = prefix + tuple(error["loc"])
        nested = getattr((error.get("ctx") or {}).get("error"), "validation_error", None)
        if isinstance(nested, ValidationError):
            problems += flatten_errors(nested, _config_class(nested.title) or cls, loc)
            continue
        for inner_loc, unknown, text in describe_validation_error(_ErrorList([error]), cls):  # type: ignore[arg-type]
            problems.append((prefix + inner_loc, unknown, text))
    return problems


class _Problems:
    """Collects (location, message, value) problems and raises them as one ValidationError."""

    def __init__(self) -> None:
        self.items: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], message: str, value: Any = None) -> None:
        error = PydanticCustomError("search_space", "{msg}", {"msg": message})
        self.items.append(InitErrorDetails(type=error, loc=loc, input=value if value is not None else {}))

    def raise_if_any(self, title: str) -> None:
        if self.items:
            raise ValidationError.from_exception_data(title, self.items)


def _check_value(problems: _Problems, loc: tuple[str | int, ...], annotation: Any, info: FieldInfo, value: Any) -> Any:
    """Validate one value against a field's type and constraints; returns the parsed value."""
    if numeric_type(annotation) is not None and isinstance(value, str):
        try:
            parsed = parse_quantity(value, "count")
        except ValueError as exc:
            problems.add(loc, str(exc), value)
            return value
        value = int(parsed) if numeric_type(annotation) is int and parsed.is_integer() else parsed
    try:
        return TypeAdapter(Annotated[annotation, info]).validate_python(value)
    except ValidationError as exc:
        for _, _, text in describe_validation_error(exc, ModelConfig):
            problems.add(loc, text.split(" (got ")[0], value)
        return value


def _check_param(problems: _Problems, name: str, spec: ParamSpec) -> ParamSpec:
    """Check a spec's values against its field; returns the spec with units parsed."""
    annotation, info = searchable_fields()[name]
    loc: tuple[str | int, ...] = (name,)
    if spec.is_fixed:
        return spec.replace(value=_check_value(problems, (*loc, "value"), annotation, info, spec.value))
    if spec.choices is not None:
        choices = [
            _check_value(problems, (*loc, "choices", i), annotation, info, c) for i, c in enumerate(spec.choices)
        ]
        duplicates = sorted({str(c) for c in choices if choices.count(c) > 1})
        if duplicates:
            problems.add((*loc, "choices"), f"repeated choices {', '.join(duplicates)}; list each value once")
        return spec.replace(choices=choices)
    number = numeric_type(annotation)
    if number is None:
        allowed = literal_choices(annotation)
        hint = f"; use choices: {allowed}" if allowed else "; use value or choices"
        problems.add(loc, f"a range (low/high) needs a numeric field, but {name} is not a number{hint}")
        return spec
    low = _check_value(problems, (*loc, "low"), annotation, info, spec.low)
    high = _check_value(problems, (*loc, "high"), annotation, info, spec.high)
    if not all(isinstance(v, int | float) for v in (low, high)):
        return spec
    if number is int and spec.step is not None and not float(spec.step).is_integer():
        problems.add((*loc, "step"), f"{name} is an integer, so step must be whole", spec.step)
    if low > high:
        problems.add(loc, f"low={low} is above high={high}; swap them")
    if spec.log and low <= 0:
        problems.add((*loc, "low"), "a log range needs low > 0", low)
    if number is float:
        low, high = float(low), float(high)
    return spec.replace(low=low, high=high, step=int(spec.step) if number is int and spec.step else spec.step)


def _check_model_section(raw: Any) -> dict[str, ParamSpec]:
    """Parse every parameter spec and check it against its field; all problems are raised together."""
    problems = _Problems()
    if not isinstance(raw, dict):
        problems.add((), "the model section is a mapping of ModelConfig fields to values, choices or ranges", raw)
        problems.raise_if_any("model")
    params: dict[str, Any] = raw
    fields = searchable_fields()
    checked: dict[str, ParamSpec] = {}
    for name, value in params.items():
        if name not in fields:
            problems.add((name,), f"unknown model field '{name}'; {_did_you_mean(name, list(fields))}")
            continue
        try:
            spec = ParamSpec.model_validate(value)
        except ValidationError as exc:
            for loc, _, text in flatten_errors(exc, ParamSpec):
                problems.add((name, *loc), text)
            continue
        checked[name] = _check_param(problems, name, spec)

    if "num_layers" not in params:
        problems.add((), "num_layers is required: the effective (unrolled) depth, fixed or searched")
    if "params_unique" in params:
        for name in DERIVED_BY_BUDGET:
            if name in params:
                problems.add((name,), f"{name} is derived from params_unique; remove {name} or params_unique")
    else:
        for name in ("d_model", "num_heads", "ffn_dim"):
            if name not in params:
                problems.add((), f"{name} is missing: give d_model, num_heads and ffn_dim, or a params_unique budget")
        for name in SIZING_KNOBS:
            if name in params:
                problems.add((name,), f"{name} only applies with a params_unique budget; add one or remove {name}")

    _check_conditions(problems, checked)
    problems.raise_if_any("model")
    return checked


def _check_conditions(problems: _Problems, params: dict[str, ParamSpec]) -> None:
    for name, spec in params.items():
        for other, allowed in (spec.when or {}).items():
            loc: tuple[str | int, ...] = (name, "when", other)
            if other == name:
                problems.add(loc, f"{name} cannot depend on itself")
                continue
            if other not in params:
                known = [n for n in params if n != name]
                problems.add(
                    loc, f"condition on '{other}', which is not in the model section; {_did_you_mean(other, known)}"
                )
                continue
            possible = params[other].possible_values()
            if possible is None:
                problems.add(loc, f"conditions may name fixed or categorical parameters; {other} is a range")
                continue
            annotation, info = searchable_fields()[other]
            shown = [str(p) for p in possible]
            for value in allowed:
                # a value the field cannot take is a typo; one outside today's choices is fine (spaces get narrowed)
                try:
                    TypeAdapter(Annotated[annotation, info]).validate_python(value)
                except ValidationError:
                    hint = _nearest(str(value), [str(c) for c in literal_choices(annotation) or possible])
                    fix = f"did you mean '{hint}'?" if hint else f"{other} takes {', '.join(shown)}"
                    problems.add(loc, f"{other} cannot be {value!r}; {fix}", value)
            if not any(value in possible for value in allowed):
                problems.add(loc, f"never holds: {other} takes {', '.join(shown)}", allowed)
    try:
        condition_order(params)
    except ValueError as exc:
        problems.add((), str(exc))


def condition_order(params: dict[str, ParamSpec]) -> list[str]:
    """Parameter names so that each comes after the parameters its condition names (YAML order otherwise)."""
    order: list[str] = []
    pending = list(params)
    while pending:
        ready = [n for n in pending if all(o in order or o not in params for o in (params[n].when or {}))]
        if not ready:
            raise ValueError(f"conditions form a cycle among {', '.join(pending)}; make one of them unconditional")
        order += ready
        pending = [n for n in pending if n not in ready]
    return order


# --- the other sections -------------------------------------------------------------------

SamplerName = Literal["tpe", "nsga2", "gp", "random"]


class SamplerSettings(FrozenConfig):
    """Which Optuna sampler proposes configurations (``sampler: tpe`` is a shorthand)."""

    name: SamplerName = Field(
        "tpe",
        description="tpe (multi-objective TPE, Optuna 5's default), nsga2, gp (Gaussian process, log-EHVI) or random.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna sampler's constructor (e.g. n_startup_trials, "
        "population_size); checked against its signature when the file is loaded.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class EarlyStoppingSettings(FrozenConfig):
    """Successive halving on validation NLL among peers of similar memory and throughput.

    Optuna does not prune multi-objective studies, so morsearch does: at each rung
    (a share of the training budget) a trial is stopped when its NLL is outside
    the best ``keep_fraction`` of the peers that reached the rung. Peers are
    trials whose ``peer_metrics`` (fixed by the configuration, so known before
    training) are within a factor ``peer_ratio`` of its own, so a small fast model
    is never stopped for losing to a big slow one. docs/EARLY_STOPPING.md
    explains and measures the rule.
    """

    enabled: bool = Field(True, description="Stop hopeless trials early.")
    rungs: tuple[float, ...] = Field(
        (0.25, 0.5), description="Shares of the training budget at which trials are compared, increasing, in (0, 1)."
    )
    keep_fraction: float = Field(0.5, gt=0, le=1, description="Share of peers kept at each rung (1/eta).")
    min_peers: int = Field(4, ge=1, description="Peers needed at a rung before any trial is stopped there.")
    peer_metrics: list[MetricName] = Field(
        default_factory=lambda: ["peak_memory", "decode_tokens_per_s"],
        description="Metrics that define peers (estimated from the configuration before training).",
    )
    peer_ratio: float = Field(2.0, ge=1, description="Peers are within this factor on every peer metric.")

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < r < 1 for r in rungs) or list(rungs) != sorted(set(rungs)):
            raise ValueError(f"rungs={list(rungs)} must be increasing shares in (0, 1), e.g. [0.25, 0.5]")
        return rungs


class BaselineSettings(FrozenConfig):
    """Reference models enqueued before the search: vanilla and plain recursive at the space's budget,
    and vanilla at the space's smallest size."""

    enabled: bool = Field(True, description="Enqueue the baselines as the first trials.")
    smallest: bool = Field(
        True,
        description="Also enqueue a vanilla model at the low end of every size knob (params_unique, d_model, "
        "ffn_dim, num_layers): the cheap end of every memory and throughput front.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Values of the other searched parameters for the baselines (default: the middle of each "
        "range, log-scaled for log ranges, and the first of each choice list).",
    )


_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SearchSpace(FrozenConfig):
    """A whole search: the design space, the objectives and caps, and how to train, measure and sample."""

    study_name: str = Field(description="Optuna study name; also the default store trials/<study_name>.db.")
    description: str = Field("", description="Free text shown by `morsearch validate` and the dashboard.")
    n_trials: int = Field(ge=1, description="Trials to finish in total (over all workers, baselines included).")
    seed: int | None = Field(0, description="Seed of the sampler (each worker offsets it); null: random.")
    storage: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; null: sqlite:///trials/<study_name>.db. PostgreSQL for "
        "workers on several machines.",
    )
    objectives: list[Objective] = Field(
        min_length=1, description="Metrics to optimise, e.g. [val_nll, peak_memory, decode_tokens_per_s]."
    )
    constraints: list[Constraint] = Field(
        default_factory=list, description="Caps such as 'peak_memory <= 2GiB' or 'params_unique <= 120M'."
    )
    reference_point: dict[MetricName, float] | None = Field(
        None, description="Hypervolume reference point per objective (worst acceptable values); pinned per space."
    )
    model: dict[str, ParamSpec] = Field(
        description="The design space: ModelConfig fields (and from_param_budget knobs) as fixed values, "
        "choices or ranges."
    )
    budget: TrainBudget = Field(description="Training budget of every proxy run (TrainBudget).")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data (DataConfig).")
    target: DeploymentTarget = Field(
        default_factory=DeploymentTarget, description="Where memory and speed are measured (DeploymentTarget)."
    )
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="Optuna sampler and its options.")
    early_stopping: EarlyStoppingSettings = Field(
        default_factory=EarlyStoppingSettings, description="Early stopping of hopeless trials."
    )
    baselines: BaselineSettings = Field(
        default_factory=BaselineSettings, description="Reference models enqueued first."
    )

    @field_validator("study_name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _STUDY_NAME.match(name):
            raise ValueError("use letters, digits, '_', '-' and '.' only (it names a file)")
        return name

    @field_validator("reference_point", mode="before")
    @classmethod
    def _reference_units(cls, point: Any) -> Any:
        if not isinstance(point, dict):
            return point
        return {
            name: parse_quantity(value, METRICS[name].unit) if name in METRICS and isinstance(value, str) else value
            for name, value in point.items()
        }

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, raw: Any) -> dict[str, ParamSpec]:
        return _check_model_section(raw)

    @field_validator("baselines")
    @classmethod
    def _baseline_values(cls, settings: BaselineSettings, info: ValidationInfo) -> BaselineSettings:
        model: dict[str, ParamSpec] | None = info.data.get("model")
        if model is None or not settings.params:
            return settings
        problems = _Problems()
        fields = searchable_fields()
        parsed = {}
        for name, value in settings.params.items():
            loc = ("params", name)
            if name not in model:
                problems.add(loc, f"'{name}' is not in the model section; {_did_you_mean(name, list(model))}")
                continue
            parsed[name] = value = _check_value(problems, loc, *fields[name], value)
            spec = model[name]
            possible = spec.possible_values()
            inside = value in possible if possible is not None else spec.low <= value <= spec.high  # type: ignore[operator]
            if not inside:
                allowed = possible if possible is not None else f"{spec.low} .. {spec.high}"
                problems.add(loc, f"outside the space; {name} takes {allowed}", value)
        problems.raise_if_any("baselines")
        return settings.replace(params=parsed)

    @model_validator(mode="after")
    def _cross_section(self) -> SearchSpace:
        problems = _Problems()
        names = [o.metric for o in self.objectives]
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.add(("objectives", i), f"{name} is listed twice; keep one", name)
        for name in self.reference_point or {}:
            if name not in names:
                problems.add(("reference_point", name), f"{name} is not an objective; objectives: {', '.join(names)}")
        if self.reference_point is not None and set(self.reference_point) != set(names):
            missing = [n for n in names if n not in self.reference_point]
            if missing:
                problems.add(("reference_point",), f"give a value for every objective; missing {', '.join(missing)}")
        self._check_lengths(problems)
        problems.raise_if_any("SearchSpace")
        return self

    def _check_lengths(self, problems: _Problems) -> None:
        """Sequences must fit the model, and the vocabulary the tokenizer."""
        max_lens = self.possible_values("max_seq_len")
        for needed, where in (
            (self.budget.seq_len, "budget.seq_len"),
            (self.target.total_len, "target prompt_len + new_tokens"),
        ):
            short = [m for m in max_lens if isinstance(m, int) and m < needed]
            if short:
                problems.add(
                    ("model", "max_seq_len"),
                    f"max_seq_len {short} is below {where}={needed}; raise it to at least {needed}",
                )
        vocab_needed = 256 if self.data.tokenizer == "byte" else self.data.bpe_vocab_size
        small = [v for v in self.possible_values("vocab_size") if isinstance(v, int) and v < vocab_needed]
        if small:
            problems.add(
                ("model", "vocab_size"),
                f"vocab_size {small} is below the {self.data.tokenizer} "
                f"tokenizer's {vocab_needed} ids; set vocab_size: {vocab_needed}",
            )

    # --- what the search layer and the workers read ---------------------------------------
    def possible_values(self, name: str) -> list[Any]:
        """Values a model field may take: its fixed value or choices, or its default when absent.

        Ranges return their two bounds (enough for the checks that use this).
        """
        spec = self.model.get(name)
        if spec is None:
            if name in ModelConfig.model_fields:
                return [ModelConfig.model_fields[name].default]
            return [SIZING_KNOBS[name][1].default]
        values = spec.possible_values()
        return values if values is not None else [spec.low, spec.high]

    @property
    def searched(self) -> dict[str, ParamSpec]:
        """The parameters the sampler chooses (everything but fixed values)."""
        return {name: spec for name, spec in self.model.items() if spec.kind != "fixed"}

    @property
    def objective_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        """Directions in objective order, as ``optuna.create_study(directions=...)`` wants them."""
        return [o.direction for o in self.objectives]

    @property
    def storage_url(self) -> str:
        """The store: ``storage`` or, by default, SQLite at ``trials/<study_name>.db``."""
        return self.storage or f"sqlite:///trials/{self.study_name}.db"
