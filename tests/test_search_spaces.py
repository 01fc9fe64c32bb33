"""Every shipped search space validates, its baselines build, and the quickstart trains one tiny trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from morsearch.model import build_model
from morsearch.search.distributions import baseline_specs, suggest, violates_caps
from morsearch.search.space import check_search_space, load_search_space, planned_steps

SPACES = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))


def test_the_three_spaces_are_shipped():
    assert {p.stem for p in SPACES} >= {"quickstart", "paper", "edge"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_validates_without_warnings(path):
    report = check_search_space(path)
    assert report.space.study_name == path.stem
    assert report.warnings == []
    assert report.baselines == ["vanilla", "recursive", "smallest"]
    assert report.invalid_share == 0


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_baselines_build_at_the_space_budget(path):
    space = load_search_space(path)
    for baseline in baseline_specs(space):
        spec = suggest(FixedTrial(baseline.params), space)
        assert spec.model.router == "none"
        assert violates_caps(spec, space) == [], f"the {baseline.name} baseline breaks a cap"
        model = build_model(spec.model)
        distinct = {id(p): p.numel() for p in model.parameters()}
        assert sum(distinct.values()) == spec.model.unique_parameters()


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_planned_steps_match_the_trainer(path):
    from morsearch.train.proxy import planned_steps as trainer_steps

    space = load_search_space(path)
    for baseline in baseline_specs(space):
        spec = suggest(FixedTrial(baseline.params), space)
        assert planned_steps(spec) == trainer_steps(spec.model, spec.budget) > 0


def test_quickstart_runs_one_tiny_trial():
    from morsearch.measure import measure
    from morsearch.train import run_proxy

    space = load_search_space(SPACES[[p.stem for p in SPACES].index("quickstart")])
    spec = suggest(FixedTrial(baseline_specs(space)[1].params), space)  # the recursive baseline
    budget = spec.budget.replace(kind="steps", value=2, eval_every=2, val_batches=1)
    result = run_proxy(spec.model, budget, spec.data, device="cpu")
    assert 0 < result.val_nll < 6
    measured = measure(result.model, spec.target.replace(repeats=1, warmup=0))
    assert measured.peak_memory_bytes > 0 and measured.decode_tokens_per_s > 0


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_survives_its_json_dump(path):
    # a worker joining from another machine rebuilds the space from the copy in the store
    from morsearch.config.space import SearchSpace

    space = load_search_space(path)
    again = SearchSpace.model_validate(json.loads(json.dumps(space.model_dump(mode="json"))))
    assert again == space
