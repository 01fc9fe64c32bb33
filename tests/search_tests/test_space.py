"""The search-space schema and loader: every problem listed with file, line, field, value and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import get_args

import pytest

from morsearch.config import ModelConfig
from morsearch.config.space import (
    METRICS,
    Constraint,
    MetricName,
    SamplerName,
    SearchSpace,
    format_metric,
    parse_quantity,
    searchable_fields,
)
from morsearch.errors import ConfigError
from morsearch.search.samplers import SAMPLERS
from morsearch.search.space import check_search_space, load_search_space

MINIMAL = """\
study_name: tiny
n_trials: 4
objectives: [val_nll, peak_memory]
model:
  vocab_size: 256
  max_seq_len: 64
  params_unique: {low: 50k, high: 200k, log: true}
  head_dim: 16
  num_layers: [4, 6]
  num_recursions: [1, 2]
  sharing: [middle_cycle, cycle]
  router: {choices: [none, expert_choice], when: {num_recursions: 2}}
budget: {kind: tokens, value: 20000, seq_len: 32}
target: {device: cpu, dtype: float32, prompt_len: 16, new_tokens: 8}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    return str(info.value).splitlines()[1:]


def test_minimal_space_loads_with_defaults(tmp_path):
    space = load_search_space(write(tmp_path, MINIMAL))
    assert space.objective_names == ["val_nll", "peak_memory"]
    assert space.directions == ["minimize", "minimize"]
    assert space.storage_url == "sqlite:///trials/tiny.db"
    assert space.sampler.name == "tpe" and space.seed == 0
    assert space.model["params_unique"].kind == "int"
    assert (space.model["params_unique"].low, space.model["params_unique"].high) == (50_000, 200_000)
    assert set(space.searched) == {"params_unique", "num_layers", "num_recursions", "sharing", "router"}


def test_every_problem_is_listed_with_line_path_value_and_hint(tmp_path):
    path = write(
        tmp_path,
        """\
        study_name: tiny
        n_trials: 0
        objectives:
          - val_nl
          - {decode_tokens_per_s: minimize}
        constraints:
          - peak_memory <= 2GBX
          - params_uniq <= 1M
        model:
          params_unique: {low: 1M, high: 100k, log: true}
          num_layer: [4, 6]
          router: [none, expert_chioce]
          d_model: 64
          capacity_schedule: {choises: [linear]}
          balancing: {choices: [loss], when: {routr: token_choice}}
        budget: {kind: flop, value: 1000}
        sampler: {name: tpe, options: {n_startup: 3}}
        """,
    )
    problems = problems_of(path)
    expected = [
        ":2: n_trials: Input should be greater than or equal to 1 (got 0)",
        ":4: objectives.0.metric: ",
        ":5: objectives.1: decode_tokens_per_s can only be maximized",
        ":7: constraints.0: unknown unit 'GBX' for a bytes quantity",
        ":8: constraints.1: unknown metric 'params_uniq' in 'params_uniq <= 1M'; did you mean 'params_unique'?",
        ":10: model.params_unique: low=1000000 is above high=100000; swap them",
        ":11: model.num_layer: unknown model field 'num_layer'; did you mean 'num_layers'?",
        ":12: model.router.choices.1: ",
        ":13: model.d_model: d_model is derived from params_unique",
        ":14: model.capacity_schedule.choises: unknown key 'choises'; did you mean 'choices'?",
        ":15: model.balancing.when.routr: condition on 'routr', which is not in the model section; did you "
        "mean 'router'?",
        ":16: budget.kind: ",
        ":17: sampler.options.n_startup: unknown option 'n_startup' of TPESampler; did you mean 'n_startup_trials'?",
    ]
    for fragment in expected:
        assert any(f"{path}{fragment}" in line for line in problems), (fragment, problems)
    assert any("did you mean 'val_nll'? (got 'val_nl')" in line for line in problems)
    assert any("did you mean 'expert_choice'? (got 'expert_chioce')" in line for line in problems)
    assert any("did you mean 'flops'? (got 'flop')" in line for line in problems)
    assert any("num_layers is required" in line for line in problems)
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines), "problems are listed in file order"


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "study_name: x\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_search_space(path)


@pytest.mark.parametrize(
    ("text", "metric", "op", "bound"),
    [
        ("peak_memory <= 2GiB", "peak_memory", "<=", 2 * 2**30),
        ("peak_memory<=512MB", "peak_memory", "<=", 512e6),
        ("params_unique <= 120M", "params_unique", "<=", 120e6),
        ("params_unique <= 0.12B", "params_unique", "<=", 120e6),
        ("decode_tokens_per_s >= 1.5k", "decode_tokens_per_s", ">=", 1500),
        ("latency_p90_ms <= 0.5s", "latency_p90_ms", "<=", 500),
    ],
)
def test_constraints_parse_units(text, metric, op, bound):
    constraint = Constraint.model_validate(text)
    assert (constraint.metric, constraint.op, constraint.bound) == (metric, op, bound)
    assert constraint.name.startswith(metric) and op in constraint.name
    sign = 1 if op == "<=" else -1
    assert constraint.violation(bound) == 0
    assert sign * constraint.violation(bound * 2) > 0


def test_constraint_errors_name_the_fix():
    with pytest.raises(ValueError, match="operator '<' .* use <= or >="):
        Constraint.model_validate("peak_memory < 2GiB")
    with pytest.raises(ValueError, match="allowed: 'B', 'KB'"):
        Constraint.model_validate("peak_memory <= 2 parsecs")
    assert parse_quantity("1e3", "count") == 1000


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("peak_memory", 1_050_750, "1.00 MiB"),
        ("peak_memory", 3.2e9, "2.98 GiB"),
        ("kv_cache_bytes", 512, "512 B"),
        ("params_unique", 2_410_944, "2.41M"),
        ("val_nll", 1.76143, "1.7614 nats/token"),
        ("decode_tokens_per_s", 1255.4, "1,255 tokens/s"),
        ("latency_p90_ms", 12.345, "12.3 ms"),
        ("not_a_metric", 1.23456789, "1.23457"),
    ],
)
def test_metric_values_are_shown_in_their_units(name: str, value: float, shown: str) -> None:
    assert format_metric(name, value) == shown
    if METRICS.get(name) and METRICS[name].unit in ("bytes", "count"):  # what is shown reads back as a bound
        assert parse_quantity(shown, METRICS[name].unit) == pytest.approx(value, rel=5e-3)


def test_registries_match_their_literals():
    assert set(METRICS) == set(get_args(MetricName))
    assert set(SAMPLERS) == set(get_args(SamplerName))


def test_model_keys_come_from_model_config():
    fields = searchable_fields()
    assert set(ModelConfig.model_fields) <= set(fields)
    assert {"params_unique", "head_dim", "kv_group_size", "ffn_ratio"} <= set(fields)


def test_range_on_a_float_field_and_refused_on_a_choice_field(tmp_path):
    text = MINIMAL.replace("  head_dim: 16\n", "  head_dim: 16\n  rope_theta: {low: 1000, high: 100000, log: true}\n")
    space = load_search_space(write(tmp_path, text))
    assert space.model["rope_theta"].kind == "float"
    bad = MINIMAL.replace("  sharing: [middle_cycle, cycle]", "  sharing: {low: 1, high: 2}")
    problems = problems_of(write(tmp_path, bad))
    assert any("model.sharing: a range (low/high) needs a numeric field" in p and "use choices" in p for p in problems)


def test_field_constraints_are_checked(tmp_path):
    bad = MINIMAL.replace("num_recursions: [1, 2]", "num_recursions: [1, 40]")
    problems = problems_of(write(tmp_path, bad))
    assert any(
        "model.num_recursions.choices.1: Input should be less than or equal to 16 (got 40)" in p for p in problems
    )


def test_condition_cycles_and_impossible_values_are_refused(tmp_path):
    bad = MINIMAL.replace(
        "  sharing: [middle_cycle, cycle]",
        "  sharing: {choices: [middle_cycle, cycle], when: {router: expert_choice}}",
    ).replace("when: {num_recursions: 2}", "when: {sharing: cycel}")
    problems = problems_of(write(tmp_path, bad))
    assert any("conditions form a cycle among sharing, router" in p for p in problems)
    assert any("model.router.when.sharing: sharing cannot be 'cycel'; did you mean 'cycle'?" in p for p in problems)
    assert any("model.router.when.sharing: never holds: sharing takes middle_cycle, cycle" in p for p in problems)


def test_sequences_must_fit_the_model(tmp_path):
    bad = MINIMAL.replace("max_seq_len: 64", "max_seq_len: 16")
    problems = problems_of(write(tmp_path, bad))
    assert any("model.max_seq_len: max_seq_len [16] is below budget.seq_len=32" in p for p in problems)
    assert any("is below target prompt_len + new_tokens=24" in p for p in problems)


def test_a_space_of_only_invalid_models_is_refused(tmp_path):
    bad = MINIMAL.replace("  sharing: [middle_cycle, cycle]", "  sharing: sequence").replace(
        "router: {choices: [none, expert_choice], when: {num_recursions: 2}}", "router: expert_choice"
    )
    problems = problems_of(write(tmp_path, bad))
    assert any("100% of random samples are not valid models" in p and "when:" in p for p in problems)


def test_caps_that_reject_most_samples_are_warned(tmp_path):
    report = check_search_space(write(tmp_path, MINIMAL + "constraints: ['params_unique <= 10k']\n"))
    assert report.capped_share == 1
    assert any(
        "100% of random samples break a cap before training (params_unique <= 10k)" in w for w in report.warnings
    )
    report = check_search_space(write(tmp_path, MINIMAL + "constraints: ['params_unique <= 70k']\n"))
    assert 0.5 < report.capped_share < 1
    report = check_search_space(write(tmp_path, MINIMAL + "constraints: ['params_unique <= 1M']\n"))
    assert report.capped_share == 0 and report.warnings == []


def test_baseline_params_are_checked_against_the_space(tmp_path):
    bad = MINIMAL + "baselines: {params: {params_unique: 1M, num_layer: 4}}\n"
    problems = problems_of(write(tmp_path, bad))
    assert any("baselines.params.params_unique: outside the space" in p for p in problems)
    assert any(
        "baselines.params.num_layer: 'num_layer' is not in the model section; did you mean" in p for p in problems
    )


def test_reference_point_accepts_units_and_must_cover_objectives(tmp_path):
    good = MINIMAL + "reference_point: {val_nll: 5.6, peak_memory: 1GiB}\n"
    assert load_search_space(write(tmp_path, good)).reference_point == {"val_nll": 5.6, "peak_memory": 2.0**30}
    bad = MINIMAL + "reference_point: {val_nll: 5.6}\n"
    assert any("missing peak_memory" in p for p in problems_of(write(tmp_path, bad)))


def test_search_space_built_in_python_is_validated_too():
    with pytest.raises(ConfigError, match="unknown model field 'routr'; did you mean 'router'"):
        SearchSpace(
            study_name="x",
            n_trials=1,
            objectives=["val_nll"],
            model={"num_layers": 2, "d_model": 32, "num_heads": 4, "ffn_dim": 64, "routr": "none"},
            budget={"value": 1e9},
        )


def test_reference_doc_is_generated_from_the_field_descriptions():
    from morsearch.search.space import reference_markdown

    doc = (Path(__file__).parents[2] / "docs" / "SEARCH_SPACE.md").read_text()
    assert reference_markdown() in doc, "regenerate with morsearch.search.space.update_reference()"
    for name, info in ModelConfig.model_fields.items():
        assert f"| `{name}` |" in doc and (info.description or "") in doc


def test_validate_command_prints_the_space_or_every_problem(tmp_path, capsys):
    from morsearch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["validate", str(write(tmp_path, MINIMAL)), "--json"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert '"study_name": "tiny"' in out and '"baselines": ["vanilla", "recursive", "smallest"]' in out
    bad = write(tmp_path, MINIMAL.replace("num_layers", "num_layer"), "bad.yaml")
    with pytest.raises(SystemExit) as info:
        main(["validate", str(bad)])
    assert info.value.code == 2
    assert "did you mean 'num_layers'?" in capsys.readouterr().err


def test_null_is_a_fixed_value(tmp_path):
    space = load_search_space(
        write(tmp_path, MINIMAL.replace("  head_dim: 16\n", "  head_dim: 16\n  router_gate: null\n"))
    )
    assert space.model["router_gate"].kind == "fixed" and space.model["router_gate"].value is None
    assert "router_gate" not in space.searched


def test_budgets_too_small_to_train_are_refused_or_warned(tmp_path):
    report = check_search_space(write(tmp_path, MINIMAL))
    assert report.steps == (39, 39) and report.warnings == []
    short = MINIMAL.replace("value: 20000", "value: 2000")
    assert any(
        "fewer than 10 optimizer steps (fewest 3)" in w for w in check_search_space(write(tmp_path, short)).warnings
    )
    none = MINIMAL.replace("value: 20000", "value: 100")
    assert any(
        "budget.value: the vanilla baseline gets less than one optimizer step" in p
        for p in problems_of(write(tmp_path, none))
    )


def test_missing_and_misspelt_sections_are_named(tmp_path):
    text = MINIMAL.replace("budget:", "budgte:")
    problems = problems_of(write(tmp_path, text))
    assert any(":1: budget: missing; add 'budget:'" in p for p in problems)
    assert any(":13: budgte: unknown key 'budgte'; did you mean 'budget'?" in p for p in problems)


def test_too_few_trials_for_the_baselines_is_warned(tmp_path):
    report = check_search_space(write(tmp_path, MINIMAL.replace("n_trials: 4", "n_trials: 2")))
    assert any(
        "n_trials=2 leaves no trial for the search after the 3 baselines (only the first 2 run)" in w
        for w in report.warnings
    )


def test_baselines_missing_for_one_reason_are_warned_once(tmp_path):
    text = MINIMAL.replace("num_recursions: [1, 2]", "num_recursions: [2, 3]").replace(
        "when: {num_recursions: 2}", "when: {num_recursions: [2, 3]}"
    )
    missing = [w for w in check_search_space(write(tmp_path, text)).warnings if w.startswith("no ")]
    assert missing == ["no vanilla and smallest baselines: num_recursions never takes 1"]
