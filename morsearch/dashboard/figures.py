"""Plotly figures drawn from ``info`` objects; they only draw, never compute.

The static report and the live app call the same functions. Every point carries its
trial number in ``customdata`` so a click can open that trial. Strings from the store
(parameter values, study names) are HTML-escaped before plotly renders them as text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from morsearch.config.space import format_metric
from morsearch.dashboard.info import (
    TOTAL_PHASES,
    FrontDetails,
    HypervolumeInfo,
    ImportanceInfo,
    ParallelInfo,
    ParetoInfo,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "curves_figure",
    "hover_texts",
    "hypervolume_figure",
    "importance_figure",
    "parallel_figure",
    "pareto_3d_figure",
    "pareto_pair_figure",
    "phases_figure",
    "routing_figure",
]

FRONT_COLOR = "#1f77b4"
DOMINATED_COLOR = "#9aa5b1"
INFEASIBLE_COLOR = "#d62728"
BASELINE_SYMBOLS = {"vanilla": "diamond", "recursive": "square", "smallest": "triangle-up"}
MAX_HOVER_PARAMS = 12


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - plotly is a core dependency; the hint is for slim installs
        from morsearch.errors import MorsearchError

        raise MorsearchError("the dashboard needs plotly: pip install 'plotly>=5.20'") from None
    return go


def _label(info: ParetoInfo, k: int) -> str:
    unit = f" [{info.units[k]}]" if k < len(info.units) and info.units[k] else ""
    better = "lower" if info.directions[k] == "minimize" else "higher"
    return f"{html.escape(info.objective_names[k])}{html.escape(unit)} ({better} is better)"


def hover_texts(info: ParetoInfo) -> dict[int, str]:
    """Each trial's hover text (trial, objectives, choices), escaped, by trial number.

    A trial's text does not depend on the filter, so the live app computes it once per
    study version and passes it to the figures of every filter.
    """
    escaped: dict[Any, str] = {}  # choices repeat a few values across thousands of trials

    def esc(value: Any) -> str:
        key = (type(value), value)
        if key not in escaped:
            escaped[key] = html.escape(str(value))
        return escaped[key]

    names = [esc(n) for n in info.objective_names]
    texts = {}
    for k, number in enumerate(info.numbers):
        baseline = info.baselines[k]
        lines = [f"<b>trial {number}</b>" + (f" ({esc(baseline)})" if baseline else "")]
        values = zip(names, info.objective_names, info.values[k], strict=True)
        lines += [f"{n}: {format_metric(metric, v)}" for n, metric, v in values]  # digits and units: no HTML
        params = list(info.params[k].items())
        lines += [f"{esc(p)} = {esc(v)}" for p, v in params[:MAX_HOVER_PARAMS]]
        if len(params) > MAX_HOVER_PARAMS:
            lines.append(f"... {len(params) - MAX_HOVER_PARAMS} more")
        shape = info.shapes[k] if k < len(info.shapes) else {}
        resolved = [f"{esc(f)}={esc(v)}" for f, v in shape.items() if f not in info.params[k]]
        if resolved:
            lines.append("<i>model: " + ", ".join(resolved) + "</i>")
        if not info.feasible[k]:
            lines.append("violates a constraint")
        texts[number] = "<br>".join(lines)
    return texts


def _groups(info: ParetoInfo) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """(legend name, row mask, marker style) for dominated, infeasible, front and each baseline."""
    baseline = np.array([b is not None for b in info.baselines], dtype=bool)
    plain = ~baseline
    groups = [
        ("dominated", plain & info.feasible & ~info.on_front, {"color": DOMINATED_COLOR, "opacity": 0.35}),
        ("infeasible", plain & ~info.feasible, {"color": INFEASIBLE_COLOR, "opacity": 0.35, "symbol": "x"}),
        ("Pareto front", plain & info.on_front, {"color": FRONT_COLOR, "opacity": 1.0, "size": 9}),
    ]
    for name in sorted({b for b in info.baselines if b}):
        mask = np.array([b == name for b in info.baselines], dtype=bool)
        style = {"color": "#ff7f0e", "size": 13, "symbol": BASELINE_SYMBOLS.get(name, "star"), "opacity": 1.0}
        groups.append((f"baseline: {html.escape(name)}", mask, style))
    return groups


def _point_arrays(info: ParetoInfo, hover: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray]:
    # numpy arrays all through: plotly validates them without a Python loop per point
    texts = hover if hover is not None else hover_texts(info)
    return np.array([texts[n] for n in info.numbers], dtype=object), np.asarray(info.numbers, dtype=np.int64)


def pareto_pair_figure(info: ParetoInfo, i: int, j: int, hover: Mapping[int, str] | None = None) -> go.Figure:
    """Objective ``i`` against objective ``j``: front highlighted, dominated faded, baselines marked.

    ``hover`` (from ``hover_texts``) may be computed once and reused across filters.
    """
    go = _go()
    fig = go.Figure()
    hover_array, numbers = _point_arrays(info, hover)
    for name, mask, style in _groups(info):
        rows = np.flatnonzero(mask)
        opacity = style.pop("opacity")
        fig.add_trace(
            go.Scattergl(
                x=info.values[rows, i],
                y=info.values[rows, j],
                mode="markers",
                name=name,
                marker={"size": 7, **style},
                opacity=opacity,
                customdata=numbers[rows],
                hovertext=hover_array[rows],
                hoverinfo="text",
            )
        )
    pair = info.pair_front(i, j)
    if len(pair):
        # staircase through this pair's own 2-objective front: what the plane alone trades off
        fig.add_trace(
            go.Scattergl(
                x=info.values[pair, i],
                y=info.values[pair, j],
                mode="lines",
                name="front of this pair",
                line={"color": FRONT_COLOR, "width": 1, "dash": "dot", "shape": "hv"},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        xaxis_title=_label(info, i),
        yaxis_title=_label(info, j),
        title=f"{html.escape(info.objective_names[i])} vs {html.escape(info.objective_names[j])}",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        clickmode="event",
    )
    return fig


def pareto_3d_figure(info: ParetoInfo, hover: Mapping[int, str] | None = None) -> go.Figure:
    """All three objectives at once (the first three, when a study has more)."""
    go = _go()
    fig = go.Figure()
    dims = min(3, len(info.objective_names))
    hover_array, numbers = _point_arrays(info, hover)
    for name, mask, style in _groups(info):
        rows = np.flatnonzero(mask)
        opacity = style.pop("opacity")
        size = style.pop("size", 4)
        coords = {"xyz"[d]: info.values[rows, d] for d in range(dims)}
        if dims < 3:
            coords["z"] = np.zeros(len(rows))
        fig.add_trace(
            go.Scatter3d(
                **coords,
                mode="markers",
                name=name,
                opacity=opacity,
                marker={"size": max(3, size - 4), **style},
                customdata=numbers[rows],
                hovertext=hover_array[rows],
                hoverinfo="text",
            )
        )
    # short titles: long ones collide in the 3-D scene
    axes = {
        f"{'xyz'[d]}axis_title": f"{html.escape(info.objective_names[d])} ({info.directions[d][:3]})"
        for d in range(dims)
    }
    fig.update_layout(
        scene=axes, title="All objectives", margin={"l": 0, "r": 0, "t": 40, "b": 0}, legend={"orientation": "h"}
    )
    return fig


def hypervolume_figure(hv: HypervolumeInfo) -> go.Figure:
    """Hypervolume against completed trials and against cumulative GPU hours, side by side."""
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("against trials", "against GPU time"), shared_yaxes=True)
    hover = [f"trial {n}: {v:.4f}" for n, v in zip(hv.numbers, hv.values, strict=True)]
    common = {"mode": "lines", "line": {"shape": "hv", "color": FRONT_COLOR}, "hovertext": hover, "hoverinfo": "text"}
    fig.add_trace(go.Scatter(x=hv.trial_index, y=hv.values, name="by trial", **common), row=1, col=1)
    fig.add_trace(go.Scatter(x=hv.gpu_hours, y=hv.values, name="by GPU time", **common), row=1, col=2)
    reference = ", ".join(f"{v:.4g}" for v in hv.reference_point)
    source = "pinned by the study" if hv.reference_pinned else "worst values + 10% of range"
    fig.update_layout(
        title=f"Hypervolume (share of the box up to the reference point [{reference}], {source})",
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
    )
    fig.update_xaxes(title_text="completed trials", row=1, col=1)
    fig.update_xaxes(title_text="GPU hours", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    return fig


def parallel_figure(par: ParallelInfo, directions: Sequence[str]) -> go.Figure:
    """Parallel coordinates of the design choices; buttons colour the lines by each objective."""
    go = _go()
    dimensions = []
    for name, column, categories in zip(par.param_names, par.param_columns, par.param_categories, strict=True):
        dim: dict[str, Any] = {"label": html.escape(str(name)), "values": column}
        if categories is not None:
            dim.update(tickvals=list(range(len(categories))), ticktext=[html.escape(c) for c in categories])
        dimensions.append(dim)
    for name, column in zip(par.objective_names, par.objective_columns, strict=True):
        dimensions.append({"label": html.escape(name), "values": column})

    def line(k: int) -> dict[str, Any]:
        # reversed scale for minimised objectives: good always looks the same colour
        scale = "Viridis_r" if directions[k] == "minimize" else "Viridis"
        return {
            "color": par.objective_columns[k],
            "colorscale": scale,
            "showscale": True,
            "colorbar": {"title": {"text": html.escape(par.objective_names[k])}},
        }

    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line(0)))
    buttons = [
        {"label": f"colour: {html.escape(name)}", "method": "restyle", "args": [{"line": [line(k)]}]}
        for k, name in enumerate(par.objective_names)
    ]
    fig.update_layout(
        title="Design choices and objectives",
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.32, "yanchor": "top"}],
        margin={"l": 80, "r": 80, "t": 120, "b": 40},
    )
    return fig


def importance_figure(imp: ImportanceInfo) -> go.Figure:
    """Each design choice's importance (eta^2) per objective, as grouped bars."""
    go = _go()
    order = np.argsort(imp.importance.max(axis=1)) if len(imp.param_names) else []
    fig = go.Figure()
    for k, name in enumerate(imp.objective_names):
        fig.add_trace(
            go.Bar(
                y=[html.escape(str(imp.param_names[p])) for p in order],
                x=[float(imp.importance[p, k]) for p in order],
                orientation="h",
                name=html.escape(name),
            )
        )
    fig.update_layout(
        barmode="group",
        title=f"Importance of each choice per objective (share of variance explained, {imp.num_trials} trials)",
        xaxis={"title": "eta^2", "range": [0, 1]},
        margin={"l": 140, "r": 20, "t": 60, "b": 50},
        height=max(320, 60 + 28 * len(imp.param_names) * max(1, len(imp.objective_names)) // 2),
    )
    return fig


def curves_figure(details: FrontDetails) -> go.Figure:
    """Validation NLL against tokens seen, one line per trial."""
    go = _go()
    fig = go.Figure()
    for number, curve in details.curves.items():
        xs, ys = zip(*curve, strict=True) if curve else ((), ())
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"trial {number}"))
    fig.update_layout(
        title="Learning curves",
        xaxis_title="tokens seen",
        yaxis_title="validation NLL",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def routing_figure(details: FrontDetails) -> go.Figure:
    """Share of tokens reaching each recursion depth, one group of bars per trial."""
    go = _go()
    fig = go.Figure()
    depth_count = max((len(r) for r in details.routing.values()), default=0)
    labels = [f"trial {n}" for n in details.routing]
    for depth in range(depth_count):
        shares = [r[depth] if depth < len(r) else None for r in details.routing.values()]
        fig.add_trace(go.Bar(x=labels, y=shares, name=f"depth {depth + 1}"))
    fig.update_layout(
        barmode="group",
        title="Share of tokens reaching each recursion depth",
        yaxis={"range": [0, 1.05]},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def phases_figure(details: FrontDetails) -> go.Figure:
    """Seconds spent in each phase (build, train, measure, ...), stacked per trial; the whole trial as a mark."""
    go = _go()
    fig = go.Figure()
    labels = [f"trial {n}" for n in details.phases]
    for phase in details.phase_names:
        seconds = [p.get(phase, 0.0) for p in details.phases.values()]
        fig.add_trace(go.Bar(x=labels, y=seconds, name=html.escape(phase)))
    totals = [next((p[t] for t in TOTAL_PHASES if t in p), None) for p in details.phases.values()]
    if any(t is not None for t in totals):
        fig.add_trace(
            go.Scatter(
                x=labels, y=totals, mode="markers", name="whole trial", marker={"symbol": "line-ew-open", "size": 30}
            )
        )
    fig.update_layout(
        barmode="stack", title="Phase timings", yaxis_title="seconds", margin={"l": 60, "r": 20, "t": 50, "b": 50}
    )
    return fig
