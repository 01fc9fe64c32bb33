"""From a ``SearchSpace`` to Optuna: distributions, one suggested trial, baselines, caps.

``suggest(trial, space)`` walks the ``model`` section in condition order, asks the
trial for every active searched parameter (fixed ones are not Optuna parameters),
and builds the ``ModelConfig``: through ``ModelConfig.from_param_budget`` when the
space gives a ``params_unique`` budget, directly otherwise. It works the same with
a live ``optuna.trial.Trial`` and with ``optuna.trial.FixedTrial``.

Two repairs keep samples valid instead of wasting them:

* ``num_layers`` is raised to the next depth the sharing strategy and
  ``num_recursions`` accept (the paper adds layers rather than dropping them);
  the stored config holds the depth actually built.
* Choices that Optuna cannot store (lists such as ``capacities``) travel as
  JSON strings and are decoded here.

A combination that is still not a valid model (e.g. a router with
``sharing: sequence``) raises ``ConfigError``; add a ``when:`` condition to the
space so it is never sampled (``morsearch validate`` reports the share).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from morsearch.config import DataConfig, DeploymentTarget, ModelConfig, TrainBudget
from morsearch.config.model import MIDDLE_SHARINGS
from morsearch.config.space import SIZING_KNOBS, ParamSpec, SearchSpace, condition_order
from morsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

# The user attribute that marks an enqueued baseline (read by search.results and the dashboard).
ATTR_BASELINE = "baseline"

_OPTUNA_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial trains and measures.

    Attributes:
        model: The model to build.
        budget: Its proxy-training budget.
        data: Its training data.
        target: Where memory and speed are measured.
        params: The values this trial chose, by parameter name (decoded; fixed ones excluded).
        baseline: ``"vanilla"``/``"recursive"``/``"smallest"`` for an enqueued baseline, else None.
    """

    model: ModelConfig
    budget: TrainBudget
    data: DataConfig
    target: DeploymentTarget
    params: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the four configs as dicts, the params and the baseline name."""
        return {
            "model": self.model.model_dump(mode="json"),
            "budget": self.budget.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "target": self.target.model_dump(mode="json"),
            "params": self.params,
            "baseline": self.baseline,
        }

    def fingerprint(self) -> str:
        """A short hash of what is trained and measured: equal for configurations that would give equal results.

        Two trials whose sampled params differ but build the same model (e.g. an
        inactive option, a repaired depth) share a fingerprint, so a stored result
        can be reused instead of training again.
        """
        payload = {key: value for key, value in self.to_dict().items() if key not in ("params", "baseline")}
        if payload["budget"].get("val_batch_size") is None:  # added later: its default keeps older fingerprints
            payload["budget"].pop("val_batch_size", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _encode(value: Any) -> Any:
    """Optuna stores only scalars as categorical choices; lists travel as JSON strings."""
    return value if isinstance(value, _OPTUNA_SCALARS) else json.dumps(value)


def _decode(spec: ParamSpec, value: Any) -> Any:
    if spec.choices is not None and not all(isinstance(c, _OPTUNA_SCALARS) for c in spec.choices):
        if isinstance(value, str) and value not in spec.choices:
            return json.loads(value)
    return value


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of one searched (non-fixed) parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec.kind == "categorical":
        return CategoricalDistribution([_encode(c) for c in spec.choices or []])
    if spec.kind == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))  # type: ignore[arg-type]
    if spec.kind == "float":
        return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)  # type: ignore[arg-type]
    raise ValueError(f"a fixed parameter has no distribution: {spec}")


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Every searched parameter's distribution, conditional ones included, in condition order."""
    return {name: distribution(space.model[name]) for name in condition_order(space.model) if name in space.searched}


def fit_num_layers(num_layers: int, sharing: str, num_recursions: int) -> int:
    """The smallest depth >= ``num_layers`` that ``sharing`` with ``num_recursions`` accepts."""
    if sharing == "none":
        return num_layers
    outside = 2 if sharing in MIDDLE_SHARINGS else 0
    shared = max(num_recursions, num_layers - outside)
    return math.ceil(shared / num_recursions) * num_recursions + outside


def model_config_from_values(values: Mapping[str, Any]) -> ModelConfig:
    """Build the ``ModelConfig`` for one set of chosen values (fields and sizing knobs)."""
    fields = {name: value for name, value in values.items() if name in ModelConfig.model_fields}
    fields["num_layers"] = fit_num_layers(
        int(fields["num_layers"]), fields.get("sharing", "none"), int(fields.get("num_recursions", 1))
    )
    if "params_unique" not in values:
        return ModelConfig(**fields)
    knobs = {name: values[name] for name in SIZING_KNOBS if name in values and name != "params_unique"}
    return ModelConfig.from_param_budget(
        int(values["params_unique"]), num_layers=fields.pop("num_layers"), **knobs, **fields
    )


def suggest(trial: optuna.trial.BaseTrial, space: SearchSpace) -> TrialSpec:
    """Ask ``trial`` for one configuration of ``space``.

    Raises:
        ConfigError: The sampled combination is not a valid model (the worker
            records the trial as failed without training).
    """
    values: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for name in condition_order(space.model):
        spec = space.model[name]
        if not spec.is_active(values):
            continue
        if spec.kind == "fixed":
            values[name] = spec.value
            continue
        if spec.kind == "categorical":
            raw = trial.suggest_categorical(name, [_encode(c) for c in spec.choices or []])
        elif spec.kind == "int":
            raw = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)  # type: ignore[arg-type]
        else:
            raw = trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)  # type: ignore[arg-type]
        values[name] = chosen[name] = _decode(spec, raw)
    try:
        model = model_config_from_values(values)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in chosen.items())
        detail = " ".join(str(exc).removeprefix("invalid ModelConfig:").split())  # one line, for logs and tables
        raise ConfigError(f"trial {trial.number}: {shown} is not a valid model: {detail}") from None
    return TrialSpec(
        model=model,
        budget=space.budget,
        data=space.data,
        target=space.target,
        params=chosen,
        baseline=trial.user_attrs.get(ATTR_BASELINE),
    )


# --- baselines --------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A reference model as fixed Optuna params: ``study.enqueue_trial(params, user_attrs=...)``.

    Attributes:
        name: ``vanilla`` (every layer unique, no router), ``recursive`` (shared
            layers, every token takes every step) or ``smallest`` (vanilla at the low
            end of every size knob).
        params: Optuna parameter values (encoded as the distributions store them).
    """

    name: str
    params: dict[str, Any]

    @property
    def user_attrs(self) -> dict[str, str]:
        return {ATTR_BASELINE: self.name}


def _center(spec: ParamSpec) -> Any:
    """The middle of a range (geometric for log ranges, snapped to its step), the median of numeric
    choices, or the first of other choices."""
    if spec.kind in ("fixed", "categorical"):
        values = spec.possible_values() or [None]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        return sorted(values)[len(values) // 2] if numeric else values[0]
    low, high = float(spec.low), float(spec.high)  # type: ignore[arg-type]
    middle = math.sqrt(low * high) if spec.log else (low + high) / 2
    if spec.step:
        middle = low + round((middle - low) / spec.step) * spec.step
    return int(round(middle)) if spec.kind == "int" else middle


def _contains(spec: ParamSpec, value: Any) -> bool:
    possible = spec.possible_values()
    if possible is not None:
        return value in possible
    return float(spec.low) <= value <= float(spec.high)  # type: ignore[arg-type]


def _integer_values(space: SearchSpace, name: str) -> list[int]:
    spec = space.model.get(name)
    if spec is not None and spec.kind == "int":
        return list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))  # type: ignore[arg-type]
    return [int(v) for v in space.possible_values(name)]


# The parameters that set a model's size: the smallest baseline takes the low end of each.
SIZE_PARAMS = ("params_unique", "d_model", "ffn_dim", "num_layers")


def _lowest_first(spec: ParamSpec) -> list[Any]:
    possible = spec.possible_values()
    return sorted(possible) if possible is not None else [spec.low]


def _baseline_wishes(space: SearchSpace) -> dict[str, dict[str, list[Any]]]:
    """Per baseline, the acceptable values of the parameters that define it, best first."""
    deeper = sorted(n for n in _integer_values(space, "num_recursions") if n > 1)
    # with one recursion every sharing strategy leaves all layers unique, i.e. vanilla
    any_sharing = ["none", "middle_cycle", "cycle", "middle_sequence", "sequence"]
    vanilla = {"router": ["none"], "num_recursions": [1], "sharing": any_sharing}
    wishes = {
        "vanilla": vanilla,
        "recursive": {
            "router": ["none"],
            "num_recursions": [deeper[len(deeper) // 2]] if deeper else [],
            "sharing": ["middle_cycle", "cycle", "middle_sequence", "sequence"],
        },
    }
    sized = {name: _lowest_first(space.model[name]) for name in SIZE_PARAMS if name in space.model}
    # In a space of one size the smallest model is the vanilla baseline itself.
    if space.baselines.smallest and any(space.model[name].kind != "fixed" for name in sized):
        wishes["smallest"] = {**vanilla, **sized}
    return wishes


def _baseline_or_reason(space: SearchSpace, name: str, wishes: dict[str, list[Any]]) -> Baseline | str:
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for param in condition_order(space.model):
        spec = space.model[param]
        if not spec.is_active(values):
            continue
        if param in wishes:
            fits = [v for v in wishes[param] if _contains(spec, v)]
            if not fits:
                return f"{param} never takes {' or '.join(map(str, wishes[param])) or 'a value > 1'}"
            value = fits[0]
        elif param in space.baselines.params:
            value = space.baselines.params[param]
            if not _contains(spec, value):
                return f"baselines.params.{param}={value!r} is outside the space"
        else:
            value = _center(spec)
        values[param] = value
        if spec.kind != "fixed":
            params[param] = _encode(value)
    for param, wanted in wishes.items():
        if param not in space.model and space.possible_values(param)[0] not in wanted:
            return f"{param} is not in the model section (default {space.possible_values(param)[0]!r})"
    return Baseline(name, params)


def baseline_specs(space: SearchSpace) -> list[Baseline]:
    """The baselines this space can express (vanilla first), as fixed params to enqueue.

    Parameters that do not define a baseline take ``baselines.params`` or the
    middle of their range, so the references sit at the space's budget; the
    smallest baseline takes the low end of every size knob instead. A
    baseline the space cannot express (e.g. ``num_recursions`` never 1) is left
    out; ``missing_baselines`` says why.
    """
    if not space.baselines.enabled:
        return []
    found = [_baseline_or_reason(space, name, wishes) for name, wishes in _baseline_wishes(space).items()]
    return [b for b in found if isinstance(b, Baseline)]


def missing_baselines(space: SearchSpace) -> dict[str, str]:
    """Baselines the space cannot express, with the reason (empty when baselines are off)."""
    if not space.baselines.enabled:
        return {}
    reasons = {name: _baseline_or_reason(space, name, wishes) for name, wishes in _baseline_wishes(space).items()}
    return {name: reason for name, reason in reasons.items() if isinstance(reason, str)}


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[Baseline]:
    """Enqueue the baselines once (a restarted study does not enqueue them again), no more than
    ``n_trials`` of them (the smallest is left out first)."""
    baselines = baseline_specs(space)[: space.n_trials]
    for baseline in baselines:
        study.enqueue_trial(baseline.params, user_attrs=baseline.user_attrs, skip_if_exists=True)
    return baselines


# --- analytic pre-filtering ---------------------------------------------------------------


def analytic_lower_bounds(spec: TrialSpec) -> dict[str, tuple[float, bool]]:
    """Lower bounds of the metrics that follow from the config alone: ``metric -> (bound, exact)``.

    * ``params_unique``: exact.
    * ``kv_cache_bytes``: the cache of every context token in the layers that
      every token runs (all of them without a router; the first step for
      token-choice; only the unique layers for expert-choice, whose inference
      routers may skip even the first step).
    * ``peak_memory``: the weights plus that cache (the harness reports weights
      plus peak growth, and the cache is part of the growth).
    """
    from morsearch.model import sizing

    cfg, target = spec.model, spec.target
    tokens = target.total_len - 1  # the last generated token is never fed back
    every_token = {"none": cfg.num_recursions, "token_choice": 1, "expert_choice": 0}[cfg.router]
    step_tokens = [float(tokens) if step < every_token else 0.0 for step in range(cfg.num_recursions)]
    kv = sizing.kv_cache_bytes(cfg, tokens, step_tokens=step_tokens, dtype_bytes=target.dtype_bytes)
    kv *= target.batch_size
    params = cfg.unique_parameters()
    return {
        "params_unique": (float(params), True),
        "kv_cache_bytes": (kv, cfg.router == "none"),
        "peak_memory": (params * target.dtype_bytes + kv, False),
    }


class CapBreak(NamedTuple):
    """A cap a configuration breaks before training: Optuna's constraint name and value."""

    name: str
    violation: float  # > 0: by how much (base units) the analytic bound is beyond the cap
    message: str


def violates_caps(spec: TrialSpec, space: SearchSpace) -> list[CapBreak]:
    """The caps of ``space`` that ``spec`` breaks before any training (empty: train it).

    Optuna's constraints are soft, so a configuration whose analytic lower bound
    already exceeds a cap is rejected here instead of being trained.
    """
    bounds = analytic_lower_bounds(spec)
    broken = []
    for constraint in space.constraints:
        if constraint.metric not in bounds:
            continue
        value, exact = bounds[constraint.metric]
        over = constraint.op == "<=" and value > constraint.bound
        under = constraint.op == ">=" and exact and value < constraint.bound
        if over or under:
            kind = "" if exact else "at least "
            message = f"{constraint.text}: this configuration needs {kind}{value:,.0f}"
            broken.append(CapBreak(constraint.name, constraint.violation(value), message))
    return broken
