"""Pure data behind every dashboard view: no plotly, no web, no torch.

Each function takes ``TrialRecord`` lists (from ``search.results``) and returns a small
frozen dataclass of plain lists and numpy arrays. ``figures`` draws these; the report
and the live app share them, and the tests check them without drawing anything.

Conventions: objectives keep Optuna's value order and their own direction
(``minimize``/``maximize``); "front" means the non-dominated, feasible, completed
trials among those shown; baselines (``vanilla``, ``recursive``) are reference points
that filters never hide.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from morsearch.dashboard.export import export_file_name
from morsearch.search.results import TrialRecord, pareto_mask
from morsearch.store import redact

__all__ = [
    "FrontDetails",
    "HypervolumeInfo",
    "ImportanceInfo",
    "ParallelInfo",
    "ParetoInfo",
    "TrialFilter",
    "apply_filter",
    "default_reference_point",
    "export_command",
    "filter_options",
    "front_details",
    "front_table",
    "objective_units",
    "hypervolume",
    "hypervolume_history",
    "importance_info",
    "parallel_info",
    "pareto_info",
    "trial_details",
]

TOTAL_PHASES = ("trial", "total")
"""Phase names that time the whole trial rather than one part of it (never stacked with the parts)."""
OVERLAPPING_PHASES = ("device_wait",)
"""Phase names that time waits inside the parts (for another worker's measurement): never stacked."""

MISSING = "(unset)"

SHAPE_FIELDS = ("d_model", "num_heads", "ffn_dim", "num_layers", "num_recursions", "sharing", "router", "kv_strategy")
"""The ModelConfig fields a hover shows besides the design choices: what the choices resolved to."""
"""Level of a conditional parameter a trial did not use (e.g. the gate of router 'none')."""


@dataclass(frozen=True)
class TrialFilter:
    """What the user narrowed the study to.

    Attributes:
        bounds: objective name -> (low, high); either end may be None (e.g. memory <= X is (None, X)).
        choices: parameter name -> allowed values (compared as strings, so YAML and JSON agree).
        ranges: numeric parameter name -> (low, high); a trial without the parameter fails the range.
    """

    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def keeps(self, trial: TrialRecord, names: Sequence[str]) -> bool:
        """True if a completed trial satisfies every bound and choice."""
        if trial.values is None:
            return False
        for name, (low, high) in self.bounds.items():
            if name not in names:
                continue
            value = trial.values[names.index(name)]
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        for param, allowed in self.choices.items():
            if allowed and _level(trial.params.get(param)) not in {str(a) for a in allowed}:
                return False
        for param, (low, high) in self.ranges.items():
            value = trial.params.get(param)
            if not isinstance(value, int | float) or isinstance(value, bool):
                return False
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        return True


def _level(value: Any) -> str:
    return MISSING if value is None else str(value)


def _levels(raw: Sequence[Any]) -> list[str]:
    """Distinct levels in a readable order: numbers by value, then strings, then the unset level."""
    present = {v for v in raw if v is not None}
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    ordered = sorted(present, key=float) if numeric else sorted(present, key=str)
    return [str(v) for v in dict.fromkeys(ordered)] + ([MISSING] if any(v is None for v in raw) else [])


def apply_filter(trials: Sequence[TrialRecord], names: Sequence[str], where: TrialFilter) -> list[TrialRecord]:
    """Completed trials that pass ``where``, plus every completed baseline."""
    return [t for t in trials if t.is_complete and (t.baseline or where.keeps(t, list(names)))]


@dataclass(frozen=True)
class ParetoInfo:
    """Points of the Pareto views: completed trials, which are on the front, which are baselines."""

    objective_names: tuple[str, ...]
    directions: tuple[str, ...]
    numbers: list[int]
    values: np.ndarray
    """(n, num_objectives) in Optuna's value order."""
    on_front: np.ndarray
    feasible: np.ndarray
    baselines: list[str | None]
    params: list[Mapping[str, Any]]
    num_total: int
    """Completed trials before filtering (to say "showing n of N")."""
    units: tuple[str, ...] = ()
    """Unit of each objective ('' when the metric is not one morsearch defines)."""
    shapes: list[Mapping[str, Any]] = field(default_factory=list)
    """Per point, the ``SHAPE_FIELDS`` of the model it trained (the config the choices resolved to)."""

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every pair of objectives (indices), in order."""
        return list(combinations(range(len(self.objective_names)), 2))

    @property
    def front_numbers(self) -> list[int]:
        return [n for n, keep in zip(self.numbers, self.on_front, strict=True) if keep]

    def pair_front(self, i: int, j: int) -> np.ndarray:
        """Rows on the 2-objective front of objectives ``i`` and ``j`` (feasible only), ordered by ``i``.

        With three objectives a trial can be on the full front yet dominated in one
        pair's plane; this is the front that pair's plot draws as its staircase.
        """
        rows = np.flatnonzero(self.feasible)
        if len(rows) == 0:
            return rows
        mask = pareto_mask(self.values[np.ix_(rows, [i, j])], [self.directions[i], self.directions[j]])
        rows = rows[mask]
        return rows[np.argsort(self.values[rows, i], kind="stable")]


def objective_units(names: Sequence[str]) -> tuple[str, ...]:
    """Each objective's unit, from the search-space metrics table ('' for unknown names)."""
    from morsearch.config.space import METRICS

    shown = {"nll": "nats/token", "count": "parameters"}
    return tuple(shown.get(METRICS[n].unit, METRICS[n].unit) if n in METRICS else "" for n in names)


def pareto_info(
    trials: Sequence[TrialRecord],
    objective_names: Sequence[str],
    directions: Sequence[str],
    where: TrialFilter | None = None,
) -> ParetoInfo:
    """Which of the (filtered) completed trials form the feasible Pareto front.

    The front is recomputed among the trials that pass the filter, so a constraint
    such as "memory <= X" shows the best trade-offs that honour it.
    """
    names = tuple(objective_names)
    complete = [t for t in trials if t.is_complete]
    shown = apply_filter(complete, names, where) if where is not None else complete
    values = np.array([t.values for t in shown], dtype=float).reshape(len(shown), len(names))
    feasible = np.array([t.feasible for t in shown], dtype=bool)
    on_front = np.zeros(len(shown), dtype=bool)
    if feasible.any():
        on_front[np.flatnonzero(feasible)] = pareto_mask(values[feasible], directions)
    return ParetoInfo(
        objective_names=names,
        directions=tuple(directions),
        numbers=[t.number for t in shown],
        values=values,
        on_front=on_front,
        feasible=feasible,
        baselines=[t.baseline for t in shown],
        params=[t.params for t in shown],
        num_total=len(complete),
        units=objective_units(names),
        shapes=[
            {k: t.model_config[k] for k in SHAPE_FIELDS if k in t.model_config} if t.model_config else {} for t in shown
        ],
    )


def filter_options(
    trials: Sequence[TrialRecord], objective_names: Sequence[str], *, max_levels: int = 8
) -> dict[str, Any]:
    """What the filter panel offers: each objective's range, each choice's levels or numeric range.

    Returns:
        ``{"objectives": {name: [min, max]}, "choices": {param: [levels]}, "ranges": {param: [min, max]}}``;
        a numeric choice with more than ``max_levels`` distinct values gets a range instead of levels.
    """
    complete = [t for t in trials if t.is_complete]
    values = np.array([t.values for t in complete], dtype=float).reshape(len(complete), len(objective_names))
    objectives = {
        name: [float(np.nanmin(values[:, i])), float(np.nanmax(values[:, i]))] if len(complete) else [None, None]
        for i, name in enumerate(objective_names)
    }
    choices: dict[str, list[str]] = {}
    ranges: dict[str, list[float]] = {}
    for name in _param_names(complete):
        raw = [t.params.get(name) for t in complete]
        levels = _levels(raw)
        if _is_numeric(raw) and len(levels) > max_levels:
            present = [float(v) for v in raw if v is not None]
            ranges[name] = [min(present), max(present)]
        else:
            choices[name] = levels
    return {"objectives": objectives, "choices": choices, "ranges": ranges}


# --- hypervolume --------------------------------------------------------------------


def _as_losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    return np.asarray(values, dtype=float) * np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``losses`` (all minimised) and bounded by ``reference``.

    Exact, by slicing along the last objective (HSO); meant for fronts of up to a
    few hundred points, which is what a study's front holds.
    """
    losses = np.asarray(losses, dtype=float)
    reference = np.asarray(reference, dtype=float)
    losses = losses[np.all(losses < reference, axis=1)]
    if len(losses) == 0:
        return 0.0
    if losses.shape[1] == 1:
        return float(reference[0] - losses[:, 0].min())
    if losses.shape[1] == 2:
        order = np.argsort(losses[:, 0], kind="stable")
        volume, best_y = 0.0, reference[1]
        for x, y in losses[order]:
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    losses = losses[pareto_mask(losses, ["minimize"] * losses.shape[1])]
    order = np.argsort(losses[:, -1], kind="stable")
    losses = losses[order]
    volume = 0.0
    for k in range(len(losses)):
        top = losses[k + 1, -1] if k + 1 < len(losses) else reference[-1]
        height = top - losses[k, -1]
        if height > 0:
            volume += height * hypervolume(losses[: k + 1, :-1], reference[:-1])
    return float(volume)


def default_reference_point(values: np.ndarray, directions: Sequence[str]) -> tuple[float, ...]:
    """The worst value of each objective pushed out by 10% of its range (when the study pinned none)."""
    values = np.asarray(values, dtype=float)
    losses = _as_losses(values, directions)
    worst, best = losses.max(axis=0), losses.min(axis=0)
    span = np.where(worst > best, worst - best, np.maximum(np.abs(worst), 1.0))
    ref_losses = worst + 0.1 * span
    return tuple(float(v) for v in _as_losses(ref_losses[None, :], directions)[0])


@dataclass(frozen=True)
class HypervolumeInfo:
    """Hypervolume of the feasible front after each completed trial, in completion order.

    The volume is normalised to the box between the best value of each objective over
    the whole study and the reference point, so it reads as a share (0..1) and the
    curve is comparable over time.
    """

    numbers: list[int]
    trial_index: list[int]
    """1-based count of completed trials at each point."""
    gpu_hours: list[float]
    """Cumulative accelerator time at each point."""
    values: list[float]
    reference_point: tuple[float, ...]
    reference_pinned: bool


def hypervolume_history(
    trials: Sequence[TrialRecord],
    directions: Sequence[str],
    reference_point: Sequence[float] | None = None,
) -> HypervolumeInfo:
    """Hypervolume against trials and against GPU time (failed trials' time counts too)."""
    finished = [t for t in trials if t.datetime_complete is not None]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    complete = [t for t in finished if t.is_complete and t.feasible]
    pinned = reference_point is not None
    if not complete:
        return HypervolumeInfo([], [], [], [], tuple(reference_point or ()), pinned)
    all_values = np.array([t.values for t in complete], dtype=float)
    reference = tuple(reference_point) if pinned else default_reference_point(all_values, directions)
    ref_losses = _as_losses(np.array([reference]), directions)[0]
    ideal = _as_losses(all_values, directions).min(axis=0)
    scale = np.where(ref_losses > ideal, ref_losses - ideal, 1.0)
    unit_ref = (ref_losses - ideal) / scale
    numbers, index, hours, volumes = [], [], [], []
    front = np.empty((0, len(directions)))
    volume, gpu_s, count = 0.0, 0.0, 0
    for trial in finished:
        gpu_s += trial.gpu_seconds or 0.0
        if not (trial.is_complete and trial.feasible):
            continue
        count += 1
        point = (_as_losses(np.array([trial.values]), directions)[0] - ideal) / scale
        dominated = len(front) and np.any(np.all(front <= point, axis=1))
        if not dominated:  # the volume only changes when the front does
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            volume = hypervolume(front, unit_ref)
        numbers.append(trial.number)
        index.append(count)
        hours.append(gpu_s / 3600.0)
        volumes.append(volume)
    return HypervolumeInfo(numbers, index, hours, volumes, tuple(float(v) for v in reference), pinned)


# --- design choices ---------------------------------------------------------------------


def _param_names(trials: Sequence[TrialRecord]) -> list[str]:
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.params))
    return list(names)


def _is_numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


@dataclass(frozen=True)
class ParallelInfo:
    """Columns of the parallel-coordinates view: one per design choice, one per objective."""

    numbers: list[int]
    param_names: list[str]
    param_columns: list[np.ndarray]
    """Numeric values, or category codes for categorical parameters."""
    param_categories: list[list[str] | None]
    """The category labels of each code (None for numeric parameters)."""
    objective_names: tuple[str, ...]
    objective_columns: list[np.ndarray]


def parallel_info(trials: Sequence[TrialRecord], objective_names: Sequence[str]) -> ParallelInfo:
    """Design choices and objectives of the completed trials, as parallel columns."""
    complete = [t for t in trials if t.is_complete]
    names = _param_names(complete)
    columns, categories = [], []
    for name in names:
        raw = [t.params.get(name) for t in complete]
        if _is_numeric(raw):
            columns.append(np.array([np.nan if v is None else float(v) for v in raw]))
            categories.append(None)
        else:
            levels = _levels(raw)
            code = {level: i for i, level in enumerate(levels)}
            columns.append(np.array([code[_level(v)] for v in raw], dtype=float))
            categories.append(levels)
    values = np.array([t.values for t in complete], dtype=float).reshape(len(complete), len(objective_names))
    return ParallelInfo(
        numbers=[t.number for t in complete],
        param_names=names,
        param_columns=columns,
        param_categories=categories,
        objective_names=tuple(objective_names),
        objective_columns=[values[:, i] for i in range(len(objective_names))],
    )


@dataclass(frozen=True)
class ImportanceInfo:
    """How much of each objective's spread each design choice explains (0..1, per objective)."""

    param_names: list[str]
    objective_names: tuple[str, ...]
    importance: np.ndarray
    """(num_params, num_objectives) correlation ratio eta^2 of the objective on the choice."""
    num_trials: int


def _groups(raw: Sequence[Any], bins: int) -> np.ndarray:
    """Group labels: one per level for categorical/small integer choices, quantile bins otherwise."""
    if _is_numeric(raw):
        present = np.array([float(v) for v in raw if v is not None])
        if len(np.unique(present)) > bins:
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
            return np.array([-1 if v is None else int(np.searchsorted(edges, float(v), side="right")) for v in raw])
    levels = {level: i for i, level in enumerate(sorted({_level(v) for v in raw}))}
    return np.array([levels[_level(v)] for v in raw])


def importance_info(trials: Sequence[TrialRecord], objective_names: Sequence[str], *, bins: int = 8) -> ImportanceInfo:
    """Each design choice's importance per objective, as the correlation ratio eta^2.

    eta^2 = between-group variance / total variance of the objective, grouping trials
    by the choice's value (numeric choices in ``bins`` quantile bins). Unlike Optuna's
    importance evaluators it needs no model fit, runs in milliseconds on thousands of
    trials, and keeps conditional choices (a trial without the choice is its own group).
    It measures association, one choice at a time; interactions are not separated.
    """
    complete = [t for t in trials if t.is_complete]
    names = _param_names(complete)
    values = np.array([t.values for t in complete], dtype=float).reshape(len(complete), len(objective_names))
    matrix = np.zeros((len(names), len(objective_names)))
    for p, name in enumerate(names):
        groups = _groups([t.params.get(name) for t in complete], bins)
        for o in range(len(objective_names)):
            y = values[:, o]
            total = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
            if total <= 0:
                continue
            between = sum(
                float(np.sum(groups == g)) * float((y[groups == g].mean() - y.mean()) ** 2) for g in np.unique(groups)
            )
            matrix[p, o] = between / total
    return ImportanceInfo(names, tuple(objective_names), matrix, len(complete))


# --- the front's trials in detail ------------------------------------------------------


@dataclass(frozen=True)
class FrontDetails:
    """Learning curves, routing depths and phase timings of the chosen trials."""

    numbers: list[int]
    curves: dict[int, list[tuple[float, float]]]
    routing: dict[int, list[float]]
    phases: dict[int, dict[str, float]]
    phase_names: list[str]


def front_details(trials: Sequence[TrialRecord], numbers: Sequence[int]) -> FrontDetails:
    """Per-trial records for the trials in ``numbers`` (usually the front), in that order."""
    by_number = {t.number: t for t in trials}
    chosen = [by_number[n] for n in numbers if n in by_number]
    phase_names: dict[str, None] = {}
    for t in chosen:
        phase_names.update(dict.fromkeys(p for p in t.phase_seconds if p not in TOTAL_PHASES + OVERLAPPING_PHASES))
    return FrontDetails(
        numbers=[t.number for t in chosen],
        curves={t.number: list(t.curve) for t in chosen if t.curve},
        routing={t.number: list(t.routing) for t in chosen if t.routing},
        phases={t.number: dict(t.phase_seconds) for t in chosen if t.phase_seconds},
        phase_names=list(phase_names),
    )


def export_command(storage_url: str, study_name: str, trial_number: int) -> str:
    """The shell command that exports one trial (quoted; a password in the URL is hidden)."""
    out = f"exports/{export_file_name(study_name, trial_number)}"
    return (
        f"morsearch export --storage {shlex.quote(redact(storage_url))} --study {shlex.quote(study_name)} "
        f"--trial {int(trial_number)} --out {shlex.quote(out)}"
    )


def front_table(
    info: ParetoInfo, storage_url: str, study_name: str, trials: Sequence[TrialRecord] | None = None
) -> list[dict[str, Any]]:
    """One row per front trial: number, objectives, design choices and the export command.

    Rows are sorted by the first objective (best first).
    """
    sign = 1.0 if info.directions[0] == "minimize" else -1.0
    rows = []
    for k in np.flatnonzero(info.on_front):
        row: dict[str, Any] = {"trial": info.numbers[k], "baseline": info.baselines[k] or ""}
        row.update({name: float(info.values[k, i]) for i, name in enumerate(info.objective_names)})
        row["params"] = dict(info.params[k])
        row["export"] = export_command(storage_url, study_name, info.numbers[k])
        rows.append(row)
    rows.sort(key=lambda r: sign * r[info.objective_names[0]])
    return rows


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def trial_details(
    trial: TrialRecord, objective_names: Sequence[str], directions: Sequence[str], storage_url: str, study_name: str
) -> dict[str, Any]:
    """Everything the details panel shows about one trial, JSON-ready (strings unescaped)."""
    objectives = {}
    if trial.values is not None:
        objectives = {
            name: {"value": value, "direction": direction}
            for name, value, direction in zip(objective_names, trial.values, directions, strict=True)
        }
    return _finite(
        {
            "trial": trial.number,
            "state": trial.state,
            "baseline": trial.baseline,
            "objectives": objectives,
            "params": dict(trial.params),
            "model_config": dict(trial.model_config) if trial.model_config else None,
            "curve": [list(p) for p in trial.curve],
            "routing": list(trial.routing),
            "phase_seconds": dict(trial.phase_seconds),
            "measurement": dict(trial.measurement),
            "constraints": dict(trial.constraints),
            "feasible": trial.feasible,
            "failure_reason": trial.failure_reason,
            "failure_detail": trial.failure_detail,
            "gpu_seconds": trial.gpu_seconds,
            "exportable": trial.model_config is not None,
            "export_command": export_command(storage_url, study_name, trial.number),
        }
    )
