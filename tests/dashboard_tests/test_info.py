"""Pure dashboard data, checked without plotly: fronts, filters, hypervolume, importance."""

from __future__ import annotations

import dataclasses
import json
import shlex
from datetime import datetime, timedelta

import numpy as np
import pytest

from morsearch.dashboard import info
from morsearch.search.results import TrialRecord, open_study

T0 = datetime(2026, 1, 1)


def record(number, values, params=None, *, state="COMPLETE", baseline=None, constraints=None, gpu=10.0):
    return TrialRecord(
        number=number,
        state=state,
        values=tuple(values) if values is not None else None,
        params=params or {},
        user_attrs={},
        datetime_start=T0 + timedelta(minutes=number),
        datetime_complete=T0 + timedelta(minutes=number + 1),
        baseline=baseline,
        constraints=constraints or {},
        gpu_seconds=gpu,
    )


NAMES = ("nll", "memory", "speed")
DIRS = ("minimize", "minimize", "maximize")


def test_pareto_info_front_filters_and_baselines():
    trials = [
        record(0, (3.0, 100, 10), {"router": "none"}, baseline="vanilla"),
        record(1, (2.0, 200, 10), {"router": "expert_choice"}),
        record(2, (2.5, 50, 10), {"router": "token_choice"}),
        record(3, (2.6, 60, 5), {"router": "token_choice"}),  # dominated by 2
        record(4, (1.0, 10, 99), {"router": "expert_choice"}, constraints={"mem": 1.0}),  # infeasible
        record(5, None, state="FAIL"),
    ]
    full = info.pareto_info(trials, NAMES, DIRS)
    assert full.numbers == [0, 1, 2, 3, 4] and full.num_total == 5
    assert full.front_numbers == [1, 2]  # 4 would dominate all, but breaks a constraint
    assert full.feasible.tolist() == [True, True, True, True, False]
    assert full.baselines[0] == "vanilla" and full.pairs == [(0, 1), (0, 2), (1, 2)]
    # memory <= 150 drops trial 1: the front among what remains is recomputed
    capped = info.pareto_info(trials, NAMES, DIRS, info.TrialFilter(bounds={"memory": (None, 150)}))
    assert capped.numbers == [0, 2, 3, 4] and capped.front_numbers == [2]
    # a design-choice filter keeps baselines as reference points
    ec = info.pareto_info(trials, NAMES, DIRS, info.TrialFilter(choices={"router": ["token_choice"]}))
    assert ec.numbers == [0, 2, 3] and ec.front_numbers == [2]
    unset = info.TrialFilter(choices={"gate": [info.MISSING]})
    assert info.pareto_info(trials, NAMES, DIRS, unset).numbers == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_optuna(dims):
    from optuna._hypervolume import compute_hypervolume  # an independent implementation as the oracle

    rng = np.random.default_rng(dims)
    points = rng.uniform(0, 1, size=(40, dims))
    reference = np.full(dims, 1.1)
    expected = compute_hypervolume(points, reference)
    assert info.hypervolume(points, reference) == pytest.approx(expected, rel=1e-9)


def test_hypervolume_simple_boxes():
    assert info.hypervolume(np.array([[0.0, 0.0]]), np.array([1.0, 2.0])) == 2.0
    assert info.hypervolume(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([2.0, 2.0])) == 3.0
    assert info.hypervolume(np.array([[3.0, 3.0]]), np.array([2.0, 2.0])) == 0.0  # beyond the reference


def test_hypervolume_history_is_monotone_and_counts_gpu_time():
    rng = np.random.default_rng(0)
    trials = [record(i, (rng.uniform(2, 4), rng.uniform(10, 100), rng.uniform(1, 50))) for i in range(60)]
    failed = record(60, None, state="FAIL", gpu=3600.0)
    trials.append(dataclasses.replace(failed, datetime_complete=T0 + timedelta(minutes=10.5)))
    hv = info.hypervolume_history(trials, DIRS)
    assert hv.trial_index == list(range(1, 61)) and not hv.reference_pinned
    assert all(b >= a for a, b in zip(hv.values, hv.values[1:], strict=False))
    assert 0 < hv.values[-1] <= 1
    assert hv.gpu_hours[-1] == pytest.approx((60 * 10 + 3600) / 3600)  # the failed hour counts
    pinned = info.hypervolume_history(trials, DIRS, reference_point=(5.0, 200.0, 0.0))
    assert pinned.reference_pinned and pinned.reference_point == (5.0, 200.0, 0.0)


def test_default_reference_point_is_beyond_the_worst():
    values = np.array([[1.0, 10.0], [2.0, 20.0]])
    assert info.default_reference_point(values, ["minimize", "maximize"]) == pytest.approx((2.1, 9.0))


def test_importance_finds_the_choice_that_matters():
    rng = np.random.default_rng(1)
    trials = []
    for i in range(200):
        router = ["none", "expert_choice"][i % 2]
        width = int(rng.choice([32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]))
        nll = (1.0 if router == "none" else 0.0) + rng.normal(0, 0.05)
        memory = width + rng.normal(0, 1)
        params = {"router": router, "d_model": width, "noise": float(rng.uniform())}
        if router != "none":
            params["gate"] = "sigmoid"
        trials.append(record(i, (nll, memory, 1.0), params))
    imp = info.importance_info(trials, NAMES)
    by = {name: imp.importance[k] for k, name in enumerate(imp.param_names)}
    assert by["router"][0] > 0.9 and by["d_model"][0] < 0.1 and by["noise"][0] < 0.1
    assert by["d_model"][1] > 0.8 and by["router"][1] < 0.1
    assert by["gate"][0] > 0.9  # conditional: its absence is a group of its own
    assert np.all(imp.importance[:, 2] == 0)  # constant objective explains nothing


def test_parallel_info_codes_categories():
    trials = [record(0, (1, 2, 3), {"router": "none", "n": 1}), record(1, (2, 3, 4), {"router": "ec", "n": 3})]
    par = info.parallel_info(trials, NAMES)
    k = par.param_names.index("router")
    assert par.param_categories[k] == ["ec", "none"] and par.param_columns[k].tolist() == [1.0, 0.0]
    assert par.param_categories[par.param_names.index("n")] is None
    assert par.objective_columns[2].tolist() == [3.0, 4.0]


def test_front_details_table_and_export_command(study_store):
    url, name = study_store
    view = open_study(url, name)
    trials = view.trials()
    pinfo = info.pareto_info(trials, view.objective_names, view.directions)
    details = info.front_details(trials, pinfo.front_numbers)
    assert details.numbers == pinfo.front_numbers
    assert set(details.curves) == set(details.numbers) and "train" in details.phase_names
    rows = info.front_table(pinfo, url, name)
    assert [r["trial"] for r in rows] and rows == sorted(rows, key=lambda r: r["val_nll"])
    assert shlex.split(rows[0]["export"])[:2] == ["morsearch", "export"]
    failed = next(t for t in trials if t.state == "FAIL")
    payload = info.trial_details(failed, view.objective_names, view.directions, url, name)
    assert payload["failure_reason"].startswith("oom") and not payload["exportable"]
    json.dumps(payload, allow_nan=False)
    view.close()


def test_export_command_quotes_hostile_names():
    command = info.export_command("postgresql://u:pw@h/db", "x; rm -rf ~", 3)
    parts = shlex.split(command)
    assert parts[parts.index("--study") + 1] == "x; rm -rf ~"
    assert "pw" not in command


def test_trial_details_is_json_safe():
    payload = info.trial_details(record(1, (float("nan"), 1.0, float("inf"))), NAMES, DIRS, "sqlite:///a.db", "s")
    text = json.dumps(payload, allow_nan=False)
    assert '"value": null' in text


def test_filter_ranges_and_options():
    trials = [
        record(i, (float(i), 1.0, 1.0), {"width": 10 * i, "router": "ec" if i % 2 else "none"}) for i in range(30)
    ]
    trials.append(record(30, (0.5, 1.0, 1.0), {"router": "ec"}))  # a trial without the numeric choice
    where = info.TrialFilter(ranges={"width": (50, 100)})
    assert info.pareto_info(trials, NAMES, DIRS, where).numbers == [5, 6, 7, 8, 9, 10]
    options = info.filter_options(trials, NAMES)
    assert options["choices"] == {"router": ["ec", "none"]}
    assert options["ranges"] == {"width": [0.0, 290.0]}
    assert options["objectives"]["nll"] == [0.0, 29.0]


def test_units_and_total_phase():
    assert info.objective_units(["val_nll", "peak_memory", "mystery"]) == ("nats/token", "bytes", "")
    phases = {"train": 5.0, "measure": 1.0, "trial": 7.0, "device_wait": 2.0}
    timed = dataclasses.replace(record(0, (1, 2, 3)), phase_seconds=phases)
    details = info.front_details([timed], [0])
    # neither the whole-trial time nor the waits inside the parts are parts to stack
    assert details.phase_names == ["train", "measure"]
