"""The ``SAMPLERS`` registry and constraints through Optuna 5's ``trial.set_constraint``.

A space names its sampler in YAML (``sampler: {name: nsga2, options: {...}}``);
``make_sampler`` builds it with morsearch's defaults for short searches, the
space's options on top, and the space's seed. Adding a sampler is one entry here
and one value in ``config.space.SamplerName``.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from morsearch.config.space import SamplerSettings, SearchSpace
from morsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.samplers import BaseSampler


def _startup_trials(space: SearchSpace) -> int:
    # Optuna's 10 random startup trials would be most of a 16-trial quickstart.
    return max(4, min(10, space.n_trials // 4))


@dataclass(frozen=True)
class SamplerEntry:
    """How to build one sampler.

    Attributes:
        load: Returns the Optuna sampler class (imported lazily).
        defaults: morsearch's defaults for a space, overridden by ``sampler.options``.
    """

    load: Callable[[], type[BaseSampler]]
    defaults: Callable[[SearchSpace], dict[str, Any]]


def _tpe() -> type[BaseSampler]:
    from optuna.samplers import TPESampler

    return TPESampler


def _nsga2() -> type[BaseSampler]:
    from optuna.samplers import NSGAIISampler

    return NSGAIISampler


def _gp() -> type[BaseSampler]:
    from optuna.samplers import GPSampler

    return GPSampler


def _random() -> type[BaseSampler]:
    from optuna.samplers import RandomSampler

    return RandomSampler


SAMPLERS: dict[str, SamplerEntry] = {
    # multivariate + group: conditional parameters (router options) are modelled jointly
    "tpe": SamplerEntry(_tpe, lambda s: {"n_startup_trials": _startup_trials(s), "multivariate": True, "group": True}),
    # OPTUNA.md: a population of 20 instead of 50 helps a lot within a few hundred trials
    "nsga2": SamplerEntry(_nsga2, lambda s: {"population_size": max(4, min(20, s.n_trials // 4))}),
    # conditional parameters fall outside the GP's joint space and are sampled independently, by design
    "gp": SamplerEntry(_gp, lambda s: {"n_startup_trials": _startup_trials(s), "warn_independent_sampling": False}),
    "random": SamplerEntry(_random, lambda s: {}),
}


def _accepted_options(cls: type[BaseSampler]) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters
    return [name for name in parameters if name not in ("self", "seed", "constraints_func")]


def sampler_problems(settings: SamplerSettings) -> list[tuple[tuple[str, ...], str]]:
    """Problems of a ``sampler`` section, as (location, message): unknown or unusable options."""
    cls = SAMPLERS[settings.name].load()
    accepted = _accepted_options(cls)
    problems: list[tuple[tuple[str, ...], str]] = []
    for option in settings.options:
        loc = ("sampler", "options", option)
        if option == "seed":
            problems.append((loc, "set the top-level seed instead (each worker offsets it)"))
        elif option == "constraints_func":
            problems.append((loc, "write caps in the top-level constraints list"))
        elif option not in accepted:
            hint = difflib.get_close_matches(option, accepted, n=1, cutoff=0.6)
            fix = f"did you mean '{hint[0]}'?" if hint else f"{cls.__name__} accepts {', '.join(accepted)}"
            problems.append((loc, f"unknown option '{option}' of {cls.__name__}; {fix}"))
    if not problems:
        try:
            cls(**settings.options)
        except (TypeError, ValueError) as exc:
            problems.append((("sampler", "options"), f"{cls.__name__} refuses these options: {exc}"))
    return problems


def make_sampler(space: SearchSpace, worker_index: int = 0) -> BaseSampler:
    """Build the space's sampler.

    Args:
        space: The search space; its ``sampler`` section and ``seed`` are used.
        worker_index: Offsets the seed so parallel workers do not propose the
            same configurations (any distinct integer per worker process).
    """
    from optuna.exceptions import ExperimentalWarning

    entry = SAMPLERS[space.sampler.name]
    options = {**entry.defaults(space), **space.sampler.options}
    seed = None if space.seed is None else space.seed + worker_index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # TPE's group is experimental but stable in use
        return entry.load()(**options, seed=seed)


def constraint_values(space: SearchSpace, metrics: Mapping[str, float]) -> dict[str, float]:
    """Optuna constraint values (> 0 violated) of the caps whose metric is in ``metrics``."""
    return {c.name: c.violation(metrics[c.metric]) for c in space.constraints if c.metric in metrics}


def set_constraints(
    trial: optuna.trial.BaseTrial, space: SearchSpace, metrics: Mapping[str, float]
) -> dict[str, float]:
    """Record every cap of ``space`` on ``trial`` with ``trial.set_constraint``; returns the values.

    Raises:
        ConfigError: A cap's metric is missing from ``metrics`` (the objective
            must measure every constrained metric).
    """
    missing = [c.metric for c in space.constraints if c.metric not in metrics]
    if missing:
        raise ConfigError(f"constraints need metrics {', '.join(missing)}, which this trial did not measure")
    values = constraint_values(space, metrics)
    for name, value in values.items():
        trial.set_constraint(name, value)
    return values
