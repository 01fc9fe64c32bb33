"""One smoke test per figure, plus the rule that store strings are escaped before drawing."""

from __future__ import annotations

import numpy as np

from morsearch.dashboard import figures, info
from morsearch.search.results import open_study

from .test_info import DIRS, NAMES, record


def _pareto():
    trials = [
        record(0, (3.0, 100, 10), {"router": "none"}, baseline="vanilla"),
        record(1, (2.0, 200, 10), {"router": "<img src=x onerror=alert(1)>"}),
        record(2, (2.5, 50, 12), {"router": "token_choice"}),
        record(3, (2.6, 60, 5), {"router": "token_choice"}),
        record(4, (1.0, 10, 99), {"router": "expert_choice"}, constraints={"mem": 1.0}),
    ]
    return trials, info.pareto_info(trials, NAMES, DIRS)


def test_pair_figure_groups_and_click_data():
    _, pinfo = _pareto()
    fig = figures.pareto_pair_figure(pinfo, 0, 2)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["Pareto front"].customdata) == [1, 2]
    assert list(by_name["infeasible"].customdata) == [4]
    assert list(by_name["baseline: vanilla"].customdata) == [0]
    assert by_name["dominated"].opacity < by_name["Pareto front"].opacity
    hover = " ".join(by_name["Pareto front"].hovertext)
    assert "<img" not in hover and "&lt;img" in hover
    # the pair's own staircase: (nll min, speed max) front is trials 1 and 2
    assert list(by_name["front of this pair"].x) == [2.0, 2.5]


def test_hover_shows_each_objective_in_its_unit():
    names = ("val_nll", "peak_memory", "decode_tokens_per_s")
    pinfo = info.pareto_info([record(0, (1.76143, 1_050_750, 1255.4), {})], names, DIRS)
    assert "peak_memory: 1.00 MiB" in figures.hover_texts(pinfo)[0]
    assert "decode_tokens_per_s: 1,255 tokens/s" in figures.hover_texts(pinfo)[0]


def test_pair_front_differs_from_full_front():
    _, pinfo = _pareto()
    rows = pinfo.pair_front(1, 2)  # memory vs speed: trial 2 (50, 12) dominates 0, 1 and 3
    assert [pinfo.numbers[r] for r in rows] == [2]


def test_3d_hypervolume_parallel_importance_and_details(study_store):
    view = open_study(*study_store)
    trials = view.trials()
    pinfo = info.pareto_info(trials, view.objective_names, view.directions)
    fig3d = figures.pareto_3d_figure(pinfo)
    assert {t.type for t in fig3d.data} == {"scatter3d"}
    hv = figures.hypervolume_figure(info.hypervolume_history(trials, view.directions, view.reference_point))
    assert len(hv.data) == 2 and hv.data[1].x[-1] > 0
    par = figures.parallel_figure(info.parallel_info(trials, view.objective_names), view.directions)
    assert len(par.data[0].dimensions) == 3 + 3 and len(par.layout.updatemenus[0].buttons) == 3
    imp = figures.importance_figure(info.importance_info(trials, view.objective_names))
    assert len(imp.data) == 3 and all(0 <= x <= 1 for x in np.concatenate([b.x for b in imp.data]))
    details = info.front_details(trials, pinfo.front_numbers)
    assert len(figures.curves_figure(details).data) == len(details.curves)
    assert len(figures.routing_figure(details).data) == max(len(r) for r in details.routing.values())
    assert [t.name for t in figures.phases_figure(details).data] == details.phase_names
    view.close()


def test_phases_figure_marks_the_whole_trial_apart():
    import dataclasses

    timed = dataclasses.replace(record(0, (1, 2, 3)), phase_seconds={"train": 5.0, "measure": 1.0, "trial": 7.0})
    fig = figures.phases_figure(info.front_details([timed], [0]))
    assert [t.name for t in fig.data] == ["train", "measure", "whole trial"]
    assert list(fig.data[2].y) == [7.0]


def test_hover_shows_the_resolved_model_config(study_store):
    view = open_study(*study_store)
    pinfo = info.pareto_info(view.trials(), view.objective_names, view.directions)
    texts = figures.hover_texts(pinfo)
    number = pinfo.front_numbers[0]
    assert "router = " in texts[number] and "model: " in texts[number] and "ffn_dim=" in texts[number]
    view.close()
