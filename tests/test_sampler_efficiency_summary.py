"""sampler_efficiency: its target (a ratio, an upper bound, or missed) and the share of a front one trial holds."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from benchmarks.sampler_efficiency import front_shape, summarise
from morsearch.search.space import load_search_space

SPACE = load_search_space(Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml")
RUNS = ["stock", "tpe", "random"]


def search(run: str, seed: int, points: list[tuple[float, float]]) -> dict:
    """A finished search whose hypervolume reached ``hv`` at ``seconds``, point by point."""
    history = [{"trial": i + 1, "device_seconds": s, "hypervolume": hv} for i, (s, hv) in enumerate(points)]
    return {"run": run, "seed": seed, "history": history}


def test_the_ratio_compares_the_seconds_each_needed():
    results = [
        search("stock", 0, [(10.0, 50.0), (40.0, 95.0)]),
        search("tpe", 0, [(10.0, 92.0), (20.0, 100.0)]),
        search("random", 0, [(30.0, 60.0)]),
    ]
    found, goal = summarise(SPACE, RUNS, results)
    assert found["summary"]["tpe"]["seconds_to_90pct_median"] == 10.0
    assert goal["value"] == pytest.approx(10.0 / 40.0) and goal["met"]
    assert not found["ratio_is_upper_bound"]


def test_stock_that_never_gets_there_bounds_the_ratio_by_its_whole_run():
    results = [search("stock", 0, [(10.0, 50.0), (80.0, 60.0)]), search("tpe", 0, [(30.0, 100.0)])]
    found, goal = summarise(SPACE, RUNS, results)
    assert found["ratio_is_upper_bound"] and "at most" in goal["name"]
    assert goal["value"] == pytest.approx(30.0 / 80.0)


def test_a_default_that_never_gets_there_misses_the_target_whatever_stock_did():
    # the best median front (random's) is out of both runs' reach
    results = [
        search("stock", 0, [(80.0, 60.0)]),
        search("tpe", 0, [(30.0, 70.0)]),
        search("random", 0, [(50.0, 100.0)]),
    ]
    found, goal = summarise(SPACE, RUNS, results)
    assert math.isinf(goal["value"]) and not goal["met"]
    assert not found["ratio_is_upper_bound"] and "never reached" in goal["name"]


def completed(values: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(values=values, state=optuna.trial.TrialState.COMPLETE)


def test_front_shape_tells_how_much_of_the_hypervolume_one_trial_holds():
    directions, reference = ["minimize", "maximize"], [10.0, 0.0]
    # boxes 9 x 10 = 90 and 1 x 20 = 20, overlapping in 1 x 10: a front of 100, 90 % of it one trial's
    front = [completed([1.0, 10.0]), completed([9.0, 20.0])]
    shape = front_shape(front, directions, reference)
    assert shape["size"] == 2
    assert shape["best_single_trial_share"] == pytest.approx(0.9)
    assert front_shape([], directions, reference) == {"size": 0, "best_single_trial_share": None}
