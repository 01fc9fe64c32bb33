"""proxy_fidelity: seed means of a cut run, what --resume keeps and refuses, the paper space's draw."""

from __future__ import annotations

import json

import pytest

from benchmarks.proxy_fidelity import (
    CONFIGS,
    earlier_raw,
    model_fields,
    paper_space_configs,
    summarise,
    with_carried,
)
from morsearch.config import ModelConfig

NAMES = list(CONFIGS)[:4]
PLAN = {name: model_fields(name, quick=True) for name in NAMES}
BUDGETS = {"reference": 10.0, "proxy_x1": 1.0}


def run(name: str, flops: float, seed: int, nll: float) -> dict:
    return {"name": name, "flops": flops, "seed": seed, "val_nll": nll, "params": 1}


def two_seeds() -> list[dict]:
    runs = []
    for rank, name in enumerate(NAMES):  # the same order at both budgets, seed 1 a little off
        for seed in (0, 1):
            runs += [run(name, 1.0, seed, 2.0 + rank + 0.1 * seed), run(name, 10.0, seed, 1.0 + rank - 0.1 * seed)]
    return runs


def test_seed_means_use_every_seed_that_the_configs_have() -> None:
    raw, _ = summarise(two_seeds(), PLAN, BUDGETS, 10.0)
    assert raw["seed_mean_agreement"]["proxy_x1"] == {"seeds": 2, "configs": 4, "kendall_tau": 1.0, "spearman_rho": 1.0}


def test_a_seed_cut_short_keeps_the_means_of_the_seeds_before_it() -> None:
    # seed 2: two references trained, no proxy yet (a resumed run cut at its time limit)
    runs = two_seeds() + [run(NAMES[0], 10.0, 2, 9.0), run(NAMES[1], 10.0, 2, 0.5)]
    raw, _ = summarise(runs, PLAN, BUDGETS, 10.0)
    assert raw["seed_mean_agreement"]["proxy_x1"]["seeds"] == 2
    assert raw["seed_mean_agreement"]["proxy_x1"]["configs"] == 4
    # with every seed-2 run in, the means take three seeds
    for rank, name in enumerate(NAMES):
        runs += [run(name, 1.0, 2, 2.0 + rank)] + ([run(name, 10.0, 2, 1.0 + rank)] if rank >= 2 else [])
    raw, _ = summarise(runs, PLAN, BUDGETS, 10.0)
    assert raw["seed_mean_agreement"]["proxy_x1"]["seeds"] == 3


def test_a_resumed_file_keeps_what_the_benchmark_does_not_write_and_names_it():
    earlier = {"budget": {}, "runs": [], "note": "by hand", "repeat_runs": [{"name": "a"}], "table": ["stale"]}
    raw = {"budget": {}, "runs": [{"name": "b"}], "table": ["new"]}
    kept = with_carried(raw, earlier)
    assert kept["note"] == "by hand" and kept["repeat_runs"] == [{"name": "a"}]
    assert kept["table"] == ["new"] and kept["runs"] == [{"name": "b"}]  # what this run writes wins
    assert kept["carried_from_earlier_file"] == ["note", "repeat_runs"]
    assert with_carried(raw, {}) == raw
    assert with_carried(kept, kept) == kept  # resuming the resumed file again carries nothing twice


def test_configs_drawn_from_the_paper_space_are_distinct_valid_models_across_its_sizes():
    configs = paper_space_configs(14)
    assert paper_space_configs(14) == configs  # the same draw every time: --resume finds its runs by name
    models = [ModelConfig(**fields) for fields in configs.values()]
    assert len({m.model_dump_json() for m in models}) == 14
    sizes = [m.unique_parameters() for m in models]
    assert all(3.5e6 <= n <= 40e6 for n in sizes) and max(sizes) > 3 * min(sizes)
    assert {m.num_recursions for m in models} > {1}  # not only vanilla


def test_resume_refuses_a_file_of_the_other_configuration_set(tmp_path):
    header = {"budget": {"kind": "flops", "value": 1.0, "batch_size": 8}, "data": {"source": "builtin"}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"raw": {**header, "runs": []}}))  # written before --configs existed: curated
    assert earlier_raw(path, {**header, "configs": "curated"})["runs"] == []
    with pytest.raises(SystemExit, match="--configs curated"):
        earlier_raw(path, {**header, "configs": "space"})
