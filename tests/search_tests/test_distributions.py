"""Suggestion (live and fixed trials), baselines, analytic caps and samplers against real Optuna studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from morsearch.config.space import SearchSpace
from morsearch.errors import ConfigError
from morsearch.search.distributions import (
    ATTR_BASELINE,
    analytic_lower_bounds,
    baseline_specs,
    distributions,
    enqueue_baselines,
    fit_num_layers,
    missing_baselines,
    suggest,
    violates_caps,
)
from morsearch.search.samplers import SAMPLERS, make_sampler, set_constraints

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_space(**changes) -> SearchSpace:
    model = {
        "vocab_size": 256,
        "max_seq_len": 64,
        "params_unique": {"low": "50k", "high": "200k", "log": True},
        "head_dim": 16,
        "num_layers": [4, 6],
        "num_recursions": [1, 2, 3],
        "sharing": {"choices": ["middle_cycle", "cycle"], "when": {"num_recursions": [2, 3]}},
        "router": {"choices": ["none", "expert_choice", "token_choice"], "when": {"num_recursions": [2, 3]}},
        "capacity_schedule": {"choices": ["linear", "geometric"], "when": {"router": "expert_choice"}},
        "balancing": {"choices": ["loss", "loss_free"], "when": {"router": "token_choice"}},
    }
    fields = {
        "study_name": "t",
        "n_trials": 8,
        "objectives": ["val_nll", "peak_memory", "decode_tokens_per_s"],
        "model": model,
        "budget": {"kind": "tokens", "value": 1000, "seq_len": 32},
        "target": {"device": "cpu", "dtype": "float32", "prompt_len": 16, "new_tokens": 8},
        **changes,
    }
    for name, value in fields.pop("model_update", {}).items():
        model[name] = value
        if value is None:  # None removes a parameter
            del model[name]
    return SearchSpace(**fields)


def test_fixed_trial_builds_model_at_the_parameter_budget():
    space = make_space()
    params = {
        "params_unique": 120_000,
        "num_layers": 6,
        "num_recursions": 2,
        "sharing": "middle_cycle",
        "router": "expert_choice",
        "capacity_schedule": "geometric",
    }
    spec = suggest(FixedTrial(params), space)
    assert abs(spec.model.unique_parameters() - 120_000) / 120_000 <= 0.02
    assert spec.model.head_dim == 16 and spec.model.num_layers == 6
    assert spec.model.router == "expert_choice" and spec.model.capacity_schedule == "geometric"
    assert spec.params == params
    assert spec.budget is space.budget and spec.target is space.target and spec.baseline is None


def test_conditional_parameters_are_only_suggested_when_active():
    space = make_space()
    # router none: no capacity_schedule or balancing needed (FixedTrial raises on a missing param)
    spec = suggest(
        FixedTrial(
            {"params_unique": 90_000, "num_layers": 4, "num_recursions": 2, "sharing": "cycle", "router": "none"}
        ),
        space,
    )
    assert spec.model.router == "none" and "capacity_schedule" not in spec.params
    with pytest.raises(ValueError, match="balancing"):
        suggest(
            FixedTrial(
                {
                    "params_unique": 90_000,
                    "num_layers": 4,
                    "num_recursions": 2,
                    "sharing": "cycle",
                    "router": "token_choice",
                }
            ),
            space,
        )
    # num_recursions 1: sharing and router are inactive, so the model is vanilla
    vanilla = suggest(FixedTrial({"params_unique": 90_000, "num_layers": 4, "num_recursions": 1}), space)
    assert vanilla.model.sharing == "none" and vanilla.model.router == "none"

    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        spec = suggest(trial, space)
        assert ("capacity_schedule" in trial.params) == (spec.model.router == "expert_choice")
        assert ("balancing" in trial.params) == (spec.model.router == "token_choice")
        assert ("router" in trial.params) == (spec.model.num_recursions > 1)
        study.tell(trial, [1.0, 1.0, 1.0])


def test_distributions_cover_every_searched_parameter():
    dists = distributions(make_space())
    assert list(dists)[:3] == ["params_unique", "num_layers", "num_recursions"]
    assert isinstance(dists["params_unique"], optuna.distributions.IntDistribution) and dists["params_unique"].log
    assert dists["router"].choices == ("none", "expert_choice", "token_choice")
    assert "vocab_size" not in dists  # fixed values are not Optuna parameters


@pytest.mark.parametrize(
    ("layers", "sharing", "nr", "fitted"),
    [
        (8, "middle_cycle", 3, 8),
        (8, "middle_cycle", 4, 10),
        (6, "cycle", 4, 8),
        (2, "cycle", 3, 3),
        (7, "none", 1, 7),
        (5, "sequence", 1, 5),
    ],
)
def test_num_layers_is_raised_to_fit_the_sharing(layers, sharing, nr, fitted):
    assert fit_num_layers(layers, sharing, nr) == fitted


def test_list_choices_travel_as_json_and_come_back_as_tuples():
    space = make_space(
        model_update={
            "num_recursions": 2,
            "router": "expert_choice",
            "capacities": {"choices": [[1.0, 0.5], [1.0, 0.25]]},
            "capacity_schedule": "linear",
            "balancing": None,
        }
    )
    dist = distributions(space)["capacities"]
    assert dist.choices == ("[1.0, 0.5]", "[1.0, 0.25]")
    spec = suggest(
        FixedTrial({"params_unique": 100_000, "num_layers": 4, "sharing": "cycle", "capacities": "[1.0, 0.25]"}), space
    )
    assert spec.model.capacities == (1.0, 0.25)
    assert spec.params["capacities"] == [1.0, 0.25]


def test_invalid_combination_raises_config_error_naming_the_values():
    space = make_space(
        model_update={"sharing": "sequence", "router": "expert_choice", "num_recursions": 2, "balancing": None}
    )
    with pytest.raises(
        ConfigError,
        match="params_unique=100000.*not a valid model: router='expert_choice' .*use sharing='middle_cycle'",
    ):
        suggest(
            FixedTrial(
                {"params_unique": 100_000, "num_layers": 4, "router": "expert_choice", "capacity_schedule": "linear"}
            ),
            space,
        )


def test_baselines_are_vanilla_and_recursive_at_the_space_budget():
    space = make_space()
    baselines = {b.name: b for b in baseline_specs(space)}
    assert list(baselines) == ["vanilla", "recursive", "smallest"]
    vanilla = suggest(FixedTrial(baselines["vanilla"].params), space).model
    recursive = suggest(FixedTrial(baselines["recursive"].params), space).model
    assert vanilla.router == "none" and vanilla.num_unique_layers == vanilla.num_layers
    assert recursive.router == "none" and recursive.num_recursions == 3 and recursive.sharing == "middle_cycle"
    # the middle of the log range 50k..200k is 100k; both land there
    for model in (vanilla, recursive):
        assert abs(model.unique_parameters() - 100_000) / 100_000 <= 0.02


def test_smallest_baseline_is_vanilla_at_the_low_end_of_every_size_knob():
    space = make_space(baselines={"params": {"params_unique": "150k", "num_layers": 6}})
    baselines = {b.name: b for b in baseline_specs(space)}
    smallest = suggest(FixedTrial(baselines["smallest"].params), space).model
    vanilla = suggest(FixedTrial(baselines["vanilla"].params), space).model
    # baselines.params place the references; the smallest keeps the space's low ends
    assert smallest.router == "none" and smallest.num_unique_layers == smallest.num_layers == 4
    assert abs(smallest.unique_parameters() - 50_000) / 50_000 <= 0.02
    assert vanilla.num_layers == 6 and vanilla.unique_parameters() > 2 * smallest.unique_parameters()


def test_no_smallest_baseline_where_the_space_has_one_size_or_it_is_off():
    one_size = make_space(model_update={"params_unique": "100k", "num_layers": 4})
    assert [b.name for b in baseline_specs(one_size)] == ["vanilla", "recursive"]
    off = make_space(baselines={"smallest": False})
    assert [b.name for b in baseline_specs(off)] == ["vanilla", "recursive"]


def test_baseline_params_override_the_middle_and_missing_baselines_say_why():
    space = make_space(baselines={"params": {"params_unique": "150k", "num_layers": 6}})
    vanilla = baseline_specs(space)[0]
    assert vanilla.params["params_unique"] == 150_000 and vanilla.params["num_layers"] == 6
    no_vanilla = make_space(model_update={"num_recursions": [2, 3]})
    assert [b.name for b in baseline_specs(no_vanilla)] == ["recursive"]
    assert "num_recursions never takes 1" in missing_baselines(no_vanilla)["vanilla"]
    assert baseline_specs(make_space(baselines={"enabled": False})) == []


def test_enqueued_baselines_run_first_once_and_are_marked():
    space = make_space()
    study = optuna.create_study(directions=space.directions)
    enqueue_baselines(study, space)
    enqueue_baselines(study, space)  # a restarted search must not enqueue them again
    names = []
    for _ in range(4):
        trial = study.ask()
        spec = suggest(trial, space)
        names.append(spec.baseline)
        study.tell(trial, [1.0, 1.0, 1.0])
    assert names == ["vanilla", "recursive", "smallest", None]
    assert study.trials[0].user_attrs[ATTR_BASELINE] == "vanilla"


def test_no_more_baselines_are_enqueued_than_trials():
    space = make_space(n_trials=2)
    study = optuna.create_study(directions=space.directions)
    assert [b.name for b in enqueue_baselines(study, space)] == ["vanilla", "recursive"]
    assert [t.user_attrs[ATTR_BASELINE] for t in study.trials] == ["vanilla", "recursive"]


def test_fingerprint_ignores_inactive_choices_but_not_the_model():
    space = make_space()
    base = {"params_unique": 90_000, "num_layers": 4, "num_recursions": 2, "sharing": "cycle"}
    a = suggest(FixedTrial({**base, "router": "none"}), space)
    b = suggest(FixedTrial({**base, "router": "none", "balancing": "loss_free"}), space)
    c = suggest(FixedTrial({**base, "router": "expert_choice", "capacity_schedule": "linear"}), space)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_caps_reject_before_training():
    space = make_space(constraints=["params_unique <= 80k", "peak_memory <= 512KiB"])
    small = suggest(FixedTrial({"params_unique": 60_000, "num_layers": 4, "num_recursions": 1}), space)
    big = suggest(FixedTrial({"params_unique": 190_000, "num_layers": 4, "num_recursions": 1}), space)
    assert violates_caps(small, space) == []
    broken = violates_caps(big, space)
    by_name = {b.name: b for b in broken}
    assert by_name["params_unique <= 80k"].message.startswith("params_unique <= 80k: this configuration needs 18")
    assert by_name["params_unique <= 80k"].violation == pytest.approx(big.model.unique_parameters() - 80_000)
    assert by_name["peak_memory <= 512KiB"].message.startswith(
        "peak_memory <= 512KiB: this configuration needs at least"
    )
    assert by_name["peak_memory <= 512KiB"].violation > 0  # Optuna's rule: > 0 is violated


def test_analytic_memory_bound_is_below_the_measured_memory():
    measure = pytest.importorskip("morsearch.measure").measure
    space = make_space()
    for params in (
        {"params_unique": 60_000, "num_layers": 4, "num_recursions": 1},
        {"params_unique": 60_000, "num_layers": 4, "num_recursions": 2, "sharing": "cycle", "router": "none"},
        {
            "params_unique": 60_000,
            "num_layers": 4,
            "num_recursions": 2,
            "sharing": "cycle",
            "router": "token_choice",
            "balancing": "loss",
        },
    ):
        spec = suggest(FixedTrial(params), space)
        bounds = analytic_lower_bounds(spec)
        measured = measure(spec.model, spec.target.replace(repeats=1, warmup=0))
        assert bounds["params_unique"][0] * 4 == measured.param_bytes
        assert bounds["kv_cache_bytes"][0] <= measured.kv_cache_bytes
        assert bounds["peak_memory"][0] <= measured.peak_memory_bytes


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_and_proposes(name):
    space = make_space(sampler={"name": name})
    sampler = make_sampler(space)
    assert (
        type(sampler)
        .__name__.lower()
        .startswith({"tpe": "tpe", "nsga2": "nsgaii", "gp": "gp", "random": "random"}[name])
    )
    study = optuna.create_study(directions=space.directions, sampler=sampler)
    for _ in range(3):
        trial = study.ask()
        suggest(trial, space)
        study.tell(trial, [1.0, 2.0, 3.0])
    assert len(study.trials) == 3


def test_sampler_options_and_worker_seeds():
    space = make_space(sampler={"name": "nsga2", "options": {"population_size": 6}})
    assert make_sampler(space)._population_size == 6
    first = []
    for worker in (0, 1):
        study = optuna.create_study(
            directions=space.directions, sampler=make_sampler(make_space(sampler="random"), worker_index=worker)
        )
        first.append(suggest(study.ask(), space).params)
    assert first[0] != first[1], "parallel workers must not propose the same configurations"


def test_constraints_are_set_through_optuna_and_read_by_samplers():
    space = make_space(constraints=["peak_memory <= 1MiB", "decode_tokens_per_s >= 100"])
    study = optuna.create_study(directions=space.directions)
    trial = study.ask()
    values = set_constraints(trial, space, {"peak_memory": 2**19, "decode_tokens_per_s": 40.0, "val_nll": 2.0})
    study.tell(trial, [2.0, 2**19, 40.0])
    assert values == {"peak_memory <= 1MiB": 2**19 - 2**20, "decode_tokens_per_s >= 100": 60.0}
    assert study.trials[0].constraints == values  # infeasible: one value > 0
    with pytest.raises(ConfigError, match="did not measure"):
        set_constraints(study.ask(), space, {"peak_memory": 1.0})
