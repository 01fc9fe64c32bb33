"""Load a search-space YAML file and refuse a wrong one before any worker starts.

``load_search_space`` lists every problem it finds at once, each as
``file:line: field.path: message``, with the bad value, what is allowed and, for
a typo, the nearest valid name. Beyond the schema (``config.space``) it checks
what needs the search layer: the sampler's options against its constructor, the
baselines build, and a random sample of the space contains valid models that
the caps do not all reject.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from morsearch.config.base import format_problem
from morsearch.config.load import key_line, line_of, read_yaml
from morsearch.config.space import SamplerSettings, SearchSpace, flatten_errors
from morsearch.errors import ConfigError
from morsearch.search.distributions import (
    TrialSpec,
    baseline_specs,
    missing_baselines,
    suggest,
    violates_caps,
)
from morsearch.search.samplers import sampler_problems

# Random configurations drawn to check that the space is not empty after caps.
PROBE_SAMPLES = 64
# Fewer optimizer steps than this, and a proxy's NLL says little about the model.
MIN_STEPS = 10


@dataclass(frozen=True)
class SpaceReport:
    """What ``morsearch validate`` prints about a valid space.

    Attributes:
        space: The validated space.
        baselines: Names of the baselines that will be enqueued.
        missing_baselines: Baselines the space cannot express, with the reason.
        invalid_share: Share of random samples that are not a valid model.
        capped_share: Share of random samples rejected by the caps before training.
        steps: Fewest and most optimizer steps a sampled model trains for (None: a wall-clock budget).
        warnings: Problems worth fixing that do not stop a search.
    """

    space: SearchSpace
    baselines: list[str]
    missing_baselines: dict[str, str]
    invalid_share: float
    capped_share: float
    steps: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)


def _locate(path: Path, node: yaml.Node | None, loc: tuple[Any, ...], unknown_key: bool = False) -> str:
    line = key_line(node, loc) if unknown_key else line_of(node, loc)
    return f"{path}:{line}" if line else str(path)


def _line_number(problem: str) -> int:
    """The line of a ``file:line: ...`` problem (0 when it has none), to list problems in file order."""
    parts = problem.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def _schema_problems(error: ConfigError, path: Path, node: yaml.Node | None) -> list[str]:
    exc = getattr(error, "validation_error", None)
    if exc is None:
        return [f"{path}: {error}"]
    problems = []
    for loc, unknown_key, text in flatten_errors(exc, SearchSpace):
        if text == "Field required":
            text = f"missing; add '{loc[-1]}:' (docs/SEARCH_SPACE.md lists every key)"
        problems.append(f"{_locate(path, node, loc, unknown_key)}: {format_problem(loc, text)}")
    return problems


def planned_steps(spec: TrialSpec) -> int | None:
    """Optimizer steps the budget pays for (None for a wall-clock budget).

    The arithmetic of ``morsearch.train.proxy.planned_steps`` (a test keeps them
    equal), repeated here so that validating a space does not import Lightning.
    """
    from morsearch.model import sizing

    budget = spec.budget
    per_step = {
        "flops": sizing.training_flops_per_token(spec.model, budget.seq_len) * budget.tokens_per_step,
        "tokens": float(budget.tokens_per_step),
        "steps": 1.0,
    }.get(budget.kind)
    return None if per_step is None else int(budget.value / per_step)


@dataclass
class _Probe:
    """What random samples of a space look like."""

    invalid: Counter[str] = field(default_factory=Counter)
    capped: Counter[str] = field(default_factory=Counter)
    n_capped: int = 0
    steps: list[int] = field(default_factory=list)


def _probe(space: SearchSpace) -> _Probe:
    """Draw random configurations: invalid ones and capped ones with their reasons, training steps."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a throwaway study
    try:
        study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)
    probe = _Probe()
    for _ in range(PROBE_SAMPLES):
        trial = study.ask()
        try:
            spec = suggest(trial, space)
        except ConfigError as exc:
            probe.invalid[str(exc).split(" is not a valid model: ", 1)[-1]] += 1
            continue
        reasons = violates_caps(spec, space)
        probe.n_capped += bool(reasons)
        probe.capped.update(reason.name for reason in reasons)
        steps = planned_steps(spec)
        if steps is not None and not reasons:
            probe.steps.append(steps)
    return probe


def _search_problems(space: SearchSpace) -> tuple[list[tuple[tuple[Any, ...], str]], SpaceReport]:
    from optuna.trial import FixedTrial

    problems: list[tuple[tuple[Any, ...], str]] = list(sampler_problems(space.sampler))
    for baseline in baseline_specs(space):
        try:
            spec = suggest(FixedTrial(baseline.params), space)
        except ConfigError as exc:
            problems.append((("baselines",), f"the {baseline.name} baseline is not a valid model: {exc}"))
            continue
        steps = planned_steps(spec)
        if steps is not None and steps < 1:
            problems.append(
                (("budget", "value"), f"the {baseline.name} baseline gets less than one optimizer step; raise it")
            )
    probe = _probe(space)
    invalid_share, capped_share = sum(probe.invalid.values()) / PROBE_SAMPLES, probe.n_capped / PROBE_SAMPLES
    warnings = []
    if probe.invalid:
        reason, _ = probe.invalid.most_common(1)[0]
        message = (
            f"{invalid_share:.0%} of random samples are not valid models, most often: {reason.strip()}; "
            "add a `when:` condition so they are never sampled"
        )
        (problems.append((("model",), message)) if invalid_share == 1 else warnings.append(message))
    # a warning, not an error: a tight cap may leave a small feasible region that 64 samples miss
    if capped_share > 0.5:
        warnings.append(
            f"{capped_share:.0%} of random samples break a cap before training ({', '.join(probe.capped)}); "
            "raise the caps or shrink the model section, or most trials will be rejected untrained"
        )
    if probe.steps and min(probe.steps) < MIN_STEPS:
        short = sum(s < MIN_STEPS for s in probe.steps) / len(probe.steps)
        warnings.append(
            f"{short:.0%} of sampled models train for fewer than {MIN_STEPS} optimizer steps "
            f"(fewest {min(probe.steps)}); raise budget.value or lower budget.batch_size"
        )
    baselines, missing = baseline_specs(space), missing_baselines(space)
    by_reason: dict[str, list[str]] = {}  # vanilla and smallest usually miss for the same reason: one warning
    for name, reason in missing.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        warnings.append(f"no {' and '.join(names)} baseline{'s' if len(names) > 1 else ''}: {reason}")
    n_baselines = len(baselines)
    if n_baselines >= space.n_trials:
        enqueued = "all of them" if n_baselines == space.n_trials else f"only the first {space.n_trials}"
        warnings.append(
            f"n_trials={space.n_trials} leaves no trial for the search after the {n_baselines} baselines "
            f"({enqueued} run); raise n_trials to search anything"
        )
    report = SpaceReport(
        space=space,
        baselines=[b.name for b in baselines],
        missing_baselines=missing,
        invalid_share=invalid_share,
        capped_share=capped_share,
        steps=(min(probe.steps), max(probe.steps)) if probe.steps else None,
        warnings=warnings,
    )
    return problems, report


def check_search_space(path: str | Path) -> SpaceReport:
    """Validate a search-space file completely and describe it.

    Raises:
        ConfigError: Listing every problem as ``file:line: field.path: message``.
    """
    path = Path(path)
    data, node = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space is a mapping with study_name, objectives, model, budget, ...")
    try:
        space = SearchSpace(**data)
    except ConfigError as error:
        problems = _schema_problems(error, path, node)
        try:  # the sampler section may be fine while others are not: check its options too
            settings = SamplerSettings.model_validate(data.get("sampler", {}))
        except ValueError:
            settings = None
        if settings is not None:
            problems += [
                f"{_locate(path, node, loc)}: {format_problem(loc, text)}" for loc, text in sampler_problems(settings)
            ]
        problems.sort(key=_line_number)
        raise ConfigError(
            f"{path}: {len(problems)} problem(s) in the search space:\n  " + "\n  ".join(problems)
        ) from None
    located, report = _search_problems(space)
    if located:
        problems = [f"{_locate(path, node, loc)}: {format_problem(loc, text)}" for loc, text in located]
        problems.sort(key=_line_number)
        raise ConfigError(f"{path}: {len(problems)} problem(s) in the search space:\n  " + "\n  ".join(problems))
    return report


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file.

    Raises:
        ConfigError: Listing every problem (file, line, field path, bad value,
            what is allowed, nearest valid name for a typo).
    """
    return check_search_space(path).space


# --- the reference of docs/SEARCH_SPACE.md, generated from the Field descriptions ------------

REFERENCE_BEGIN = "<!-- reference: generated by morsearch.search.space.reference_markdown(); do not edit -->"
REFERENCE_END = "<!-- end of generated reference -->"


def _type_name(annotation: Any) -> str:
    from typing import Literal, get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + " or null"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _default(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        value = info.default_factory()
        return "(section defaults)" if isinstance(value, BaseModel) else f"`{value}`"
    if info.default is PydanticUndefined or info.default is ...:
        return "**required**"
    if isinstance(info.default, float):
        return f"`{info.default:g}`"
    return f"`{info.default}`"


def _fields_table(fields: dict[str, tuple[Any, Any]]) -> list[str]:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, (annotation, info) in fields.items():
        text = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(annotation)} | {_default(info)} | {text} |")
    return rows


def _model_fields(cls: type[Any]) -> dict[str, tuple[Any, Any]]:
    return {name: (info.annotation, info) for name, info in cls.model_fields.items()}


def reference_markdown() -> str:
    """The field-by-field reference of the search-space format, from the schema's own descriptions."""
    from morsearch.config import DataConfig, DeploymentTarget, TrainBudget
    from morsearch.config.space import (
        METRICS,
        BaselineSettings,
        EarlyStoppingSettings,
        ParamSpec,
        SamplerSettings,
        searchable_fields,
    )

    sections: list[tuple[str, str, dict[str, tuple[Any, Any]]]] = [
        ("Top level", "The keys of a search-space file.", _model_fields(SearchSpace)),
        (
            "`model:` keys",
            "ModelConfig's fields, then the sizing knobs of `ModelConfig.from_param_budget`. Each takes a "
            "fixed value, choices or a range (next table); values are checked against the type shown.",
            searchable_fields(),
        ),
        ("A `model:` entry", "The forms of one parameter.", _model_fields(ParamSpec)),
        ("`budget:` (TrainBudget)", "", _model_fields(TrainBudget)),
        ("`data:` (DataConfig)", "", _model_fields(DataConfig)),
        ("`target:` (DeploymentTarget)", "", _model_fields(DeploymentTarget)),
        ("`sampler:`", "", _model_fields(SamplerSettings)),
        (
            "`early_stopping:`",
            (EarlyStoppingSettings.__doc__ or "").split("\n\n")[0],
            _model_fields(EarlyStoppingSettings),
        ),
        ("`baselines:`", "", _model_fields(BaselineSettings)),
    ]
    lines = [REFERENCE_BEGIN, ""]
    for title, intro, fields in sections:
        lines += [f"### {title}", ""] + ([intro, ""] if intro else []) + _fields_table(fields) + [""]
    lines += [
        "### Metrics",
        "",
        "Names usable in `objectives`, `constraints`, `reference_point` and `early_stopping.peer_metrics`.",
        "",
        "| metric | direction | unit | read from | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| `{n}` | {m.direction} | {m.unit} | `{m.source}` | {m.description} |" for n, m in METRICS.items()]
    lines += ["", REFERENCE_END]
    return "\n".join(lines)


def update_reference(path: str | Path = "docs/SEARCH_SPACE.md") -> bool:
    """Rewrite the generated reference inside ``path``; returns whether it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = text.index(REFERENCE_BEGIN), text.index(REFERENCE_END) + len(REFERENCE_END)
    updated = text[:start] + reference_markdown() + text[end:]
    path.write_text(updated, encoding="utf-8")
    return updated != text
