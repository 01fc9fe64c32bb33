"""The static report: one self-contained HTML file (plotly.js embedded, no network needed).

``morsearch report --storage URL --study NAME --out dashboards/NAME.html`` calls
``write_report``. Every string from the store is HTML-escaped; figure JSON escapes
``<`` so no stored text can close a ``<script>`` element.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from morsearch.dashboard import figures, info
from morsearch.errors import MorsearchError
from morsearch.search.results import StudyView, open_study
from morsearch.store import redact

__all__ = ["build_report", "plotly_js", "write_report"]

_CSS = """
body {font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 16px; color: #1b1f24}
h1 {margin: 18px 0 4px}
h2 {margin: 28px 0 6px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px}
.meta {color: #57606a; margin: 0 0 8px}
.grid {display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px}
.fig {min-height: 420px; border: 1px solid #eaeef2; border-radius: 6px}
.wide {grid-column: span 2}
.note {color: #57606a; font-size: .9em}
table {border-collapse: collapse; width: 100%; font-size: .9em}
th, td {border-bottom: 1px solid #eaeef2; padding: 4px 6px; text-align: left; vertical-align: top}
th {cursor: pointer; background: #f6f8fa; position: sticky; top: 0}
th.sorted-asc::after {content: ' \\25B2'}
th.sorted-desc::after {content: ' \\25BC'}
code {font-size: .85em; background: #f6f8fa; padding: 1px 4px; border-radius: 4px; word-break: break-all}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], asc = !th.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


_DRAW_JS = """
FIGURES.forEach(function (item) {
  Plotly.newPlot(item[0], item[1].data, item[1].layout, {responsive: true, displaylogo: false});
});
"""


def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly Python package (never a CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _figure_block(div_id: str, fig: Any, css: str = "fig") -> str:
    # plotly's JSON encoder writes '<' as \\u003c, so the payload cannot end the script element.
    # Figures are drawn once the page is laid out (see _DRAW_JS): a grid cell drawn while
    # it is the grid's only child would take the full width.
    return f'<div class="{css}" id="{div_id}"></div>\n<script>FIGURES.push(["{div_id}", {fig.to_json()}]);</script>\n'


def _table(rows: list[dict[str, Any]], objective_names: tuple[str, ...]) -> str:
    head = ["trial", "baseline", *objective_names, "design choices", "export command"]
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        cells = [(row["trial"], str(row["trial"])), (row["baseline"], row["baseline"])]
        cells += [(row[name], f"{row[name]:.6g}") for name in objective_names]
        cells += [(params, params), (row["export"], f"<code>{html.escape(row['export'])}</code>")]
        out.append("<tr>")
        for value, shown in cells:
            text = shown if shown.startswith("<code>") else html.escape(shown)
            out.append(f'<td data-value="{html.escape(str(value), quote=True)}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def build_report(view: StudyView) -> str:
    """The report's HTML text for one study."""
    trials = view.trials()
    names, directions = view.objective_names, view.directions
    pareto = info.pareto_info(trials, names, directions)
    states = Counter(t.state for t in trials)
    failures = Counter((t.failure_reason or "unknown").split(":")[0] for t in trials if t.state == "FAIL")
    title = f"morsearch report: {view.name}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        f"<script>{plotly_js()}</script><script>var FIGURES = [];</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>store {html.escape(redact(view.storage_url))} &middot; "
        f"generated {datetime.now(UTC).isoformat(timespec='seconds')} &middot; "
        + " &middot; ".join(f"{html.escape(s.lower())}: {n}" for s, n in sorted(states.items()))
        + "</p>",
        "<p class='meta'>objectives: "
        + ", ".join(f"{html.escape(n)} ({html.escape(d)})" for n, d in zip(names, directions, strict=True))
        + "</p>",
    ]
    if failures:
        parts.append(
            "<p class='meta'>failed trials by reason: "
            + ", ".join(f"{html.escape(r)}: {n}" for r, n in failures.most_common())
            + "</p>"
        )
    if not pareto.numbers:
        parts.append("<p>No completed trial yet: run workers, then build the report again.</p></body></html>")
        return "".join(parts)

    parts.append(
        "<h2>Pareto fronts</h2><p class='note'>Front trials in blue; dominated trials faded; "
        "infeasible (constraint violated) as crosses; baselines marked in orange.</p><div class='grid'>"
    )
    for k, (i, j) in enumerate(pareto.pairs):
        parts.append(_figure_block(f"pair{k}", figures.pareto_pair_figure(pareto, i, j)))
    if len(names) >= 3:
        parts.append(_figure_block("pareto3d", figures.pareto_3d_figure(pareto), css="fig wide"))
    parts.append("</div>")

    hv = info.hypervolume_history(trials, directions, view.reference_point)
    parts.append("<h2>Hypervolume</h2>")
    parts.append(_figure_block("hypervolume", figures.hypervolume_figure(hv)))

    parallel = info.parallel_info(trials, names)
    if parallel.param_names:
        parts.append("<h2>Design choices</h2>")
        parts.append(_figure_block("parallel", figures.parallel_figure(parallel, directions)))
        importance = info.importance_info(trials, names)
        parts.append(_figure_block("importance", figures.importance_figure(importance)))
        parts.append(
            "<p class='note'>Importance is the correlation ratio eta&sup2;: the share of an objective's variance "
            "explained by grouping trials by that choice alone.</p>"
        )

    details = info.front_details(trials, pareto.front_numbers)
    parts.append("<h2>The front's trials</h2><div class='grid'>")
    if details.curves:
        parts.append(_figure_block("curves", figures.curves_figure(details)))
    if details.routing:
        parts.append(_figure_block("routing", figures.routing_figure(details)))
    if details.phases:
        parts.append(_figure_block("phases", figures.phases_figure(details)))
    parts.append("</div>")
    rows = info.front_table(pareto, view.storage_url, view.name)
    parts.append(f"<h2>Front ({len(rows)} trials)</h2><p class='note'>Click a header to sort.</p>")
    parts.append(_table(rows, names))
    parts.append(f"<script>{_SORT_JS}{_DRAW_JS}</script></body></html>")
    return "".join(parts)


def write_report(storage_url: str, study_name: str | None, out_path: str | Path) -> Path:
    """Build the report of a study and write it to ``out_path`` (folders created).

    Raises:
        StorageError: the store or study cannot be read.
        MorsearchError: ``out_path`` is a folder.
    """
    view = open_study(storage_url, study_name)
    try:
        text = build_report(view)
    finally:
        view.close()
    path = Path(out_path)
    if path.is_dir():
        raise MorsearchError(f"{path} is a folder; pass a file name such as {path / 'report.html'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path
