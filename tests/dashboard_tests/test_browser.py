"""The live dashboard used as a person would: real server, real store, headless Chromium.

Runs on two stores: a study filled by an ask/tell loop (with a failed trial), and a copy
of the store a real ``morsearch search search_spaces/quickstart.yaml`` wrote
(tests/dashboard_tests/assets/quickstart.db; its README says how to regenerate it).

Opens the page, checks the front is drawn and nothing is fetched from another origin,
clicks a front point, reads its details, exports it and loads the export as a model
config, filters by a constraint, opens a failed trial, and watches a trial that
finishes while the page is open appear without a reload. Saves a screenshot under
test-artifacts/.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from morsearch.config import ModelConfig, load_config
from morsearch.dashboard.app import make_server
from morsearch.search.results import open_study

from .conftest import copy_quickstart_store, fill_study

CHROMIUM = os.environ.get("MORSEARCH_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)

RENDERED = "(v) => document.getElementById('front').dataset.version === v"


@pytest.fixture(params=["ask_tell", "quickstart"])
def live_study(request, tmp_path):
    """A served study: one filled by an ask/tell loop, or a copy of a real quickstart search's store."""
    import optuna

    if request.param == "quickstart":
        path = copy_quickstart_store(tmp_path / "quickstart.db")
        url, name = f"sqlite:///{path}", "quickstart"
        study = optuna.load_study(study_name=name, storage=url)
    else:
        url, name = f"sqlite:///{tmp_path / 'live.db'}", "live"
        study = fill_study(url, name, num_trials=30, seed=3)
    server, app = make_server(url, port=0, export_dir=tmp_path / "exports")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, url, study, f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "exports"
    server.shutdown()
    server.server_close()
    app.close()


def _click_point(page, trace_name: str) -> int:
    """Click the first point of a trace where it is drawn; return its trial number."""
    spot = page.evaluate(
        """(name) => {
            const gd = document.getElementById('front');
            const trace = gd._fullData.find((t) => t.name === name);
            const L = gd._fullLayout;
            return {x: L.xaxis.d2p(trace.x[0]), y: L.yaxis.d2p(trace.y[0]), number: trace.customdata[0]};
        }""",
        trace_name,
    )
    area = page.locator("#front .nsewdrag").first.bounding_box()  # the plot area; d2p is relative to it
    page.mouse.click(area["x"] + spot["x"], area["y"] + spot["y"])
    return int(spot["number"])


def test_dashboard_in_a_real_browser(live_study):
    kind, url, study, base, export_dir = live_study
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(base)
            page.wait_for_function("document.getElementById('front').dataset.version !== undefined", timeout=30_000)

            # the front is drawn: a plot with the front's points and the baselines
            names = page.evaluate("document.getElementById('front')._fullData.map((t) => t.name)")
            assert {"Pareto front", "baseline: vanilla", "baseline: recursive"} <= set(names)
            assert page.locator("#front .main-svg").count() >= 1
            assert "on the front" in page.inner_text("#shown")

            # click a front point: its details open
            number = _click_point(page, "Pareto front")
            page.wait_for_selector("#details:not([hidden])", timeout=10_000)
            assert page.inner_text("#d-title").startswith(f"Trial {number} (complete")
            assert '"d_model"' in page.inner_text("#d-config")
            page.wait_for_function("document.querySelector('#d-curve .main-svg') !== null", timeout=10_000)

            # export it: the file lands in the export folder and loads as a model config
            page.click("#export")
            page.wait_for_selector("#export-result:not([hidden])", timeout=10_000)
            path = Path(page.inner_text("#export-path"))
            assert path.parent == export_dir.resolve()
            assert page.inner_text("#train-command") == f"morsearch train {path}"
            config = load_config(path, ModelConfig, section="model")
            view = open_study(url, study.study_name)
            assert config == ModelConfig(**view.trial(number).model_config)
            view.close()
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{kind}.png"))
            page.locator("#d-curve").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{kind}-details.png"))

            # filter by a constraint on the y objective (below its median): fewer trials, front recomputed
            total = int(page.inner_text("#shown").split(" of ")[1].split()[0])
            version = page.evaluate("document.getElementById('front').dataset.version")
            y_name = page.evaluate("document.querySelectorAll('#bounds [data-bound]')[1].dataset.bound")
            ys = page.evaluate(  # baselines stay whatever the filter, so the cap is set among the others
                "[].concat(...document.getElementById('front')._fullData"
                ".filter((t) => t.mode === 'markers' && !t.name.startsWith('baseline'))"
                ".map((t) => Array.from(t.y)))"
            )
            cap = sorted(ys)[(len(ys) - 1) // 2]
            page.fill(f"[data-bound='{y_name}'] .hi", repr(cap))
            page.click("#apply")
            page.wait_for_function(
                "(t) => !document.getElementById('shown').textContent.includes('showing ' + t + ' of')", arg=total
            )
            shown = int(page.inner_text("#shown").split()[1])
            assert 0 < shown < total
            front_ys = page.evaluate(
                "Array.from(document.getElementById('front')._fullData.filter((t) => t.name === 'Pareto front')[0].y)"
            )
            assert max(front_ys) <= cap

            # a failed trial's details show why it failed
            if kind == "ask_tell":
                page.click("#failed a")
                page.wait_for_function("document.getElementById('d-failure').textContent.includes('oom')")
                assert page.is_disabled("#export")

            # a trial that finishes while the page is open appears without a reload
            study.tell(study.ask(), [3.0, 10.0, 5000.0])
            page.wait_for_function(f"document.getElementById('front').dataset.version !== '{version}'", timeout=15_000)
            page.click("#reset")
            page.wait_for_function(
                "(t) => document.getElementById('shown').textContent.includes('of ' + t + ' completed')",
                arg=total + 1,
                timeout=10_000,
            )
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{kind}-after-refresh.png"))
        finally:
            browser.close()
    assert not errors, errors
    foreign = [u for u in requests if not u.startswith(base)]
    assert not foreign, f"the page loaded external URLs: {foreign}"


def test_first_front_is_drawn_before_plotly_runs(study_store, tmp_path):
    """A first visit draws the front on a canvas at once; plotly's interactive plot replaces it."""
    url, _ = study_store
    server, app = make_server(url, port=0, export_dir=tmp_path / "exports")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    held: list = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/static/plotly.js", lambda route: held.append(route))  # held back until we let it go
        try:
            page.goto(base, wait_until="commit")
            page.wait_for_function("document.getElementById('front').dataset.drawnAtMs !== undefined")
            assert page.evaluate("document.getElementById('front').dataset.drawn") == "preview"
            blue = page.evaluate(  # the front's points are on the canvas, in the front's colour
                """() => {
                    const c = document.getElementById('front-preview');
                    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < px.length; i += 4) if (px[i] === 31 && px[i + 1] === 119) n++;
                    return n;
                }"""
            )
            assert blue > 50
            assert "on the front" in page.inner_text("#shown") and page.locator("#bounds [data-bound]").count() == 3
            assert held and page.evaluate("window.Plotly === undefined")
            for route in held:
                route.continue_()
            page.wait_for_function(RENDERED, arg=page.evaluate("S.version"), timeout=30_000)
            assert page.evaluate("document.getElementById('front').dataset.drawn") == "plotly"
            assert page.locator("#front-preview").count() == 0 and page.locator("#front .main-svg").count() >= 1
        finally:
            browser.close()
            server.shutdown()
            server.server_close()
            app.close()
    assert not errors, errors


def test_report_table_sorts_in_a_real_browser(study_store, tmp_path):
    from morsearch.dashboard.report import write_report

    path = write_report(*study_store, tmp_path / "report.html")
    column = "(k) => Array.from(document.querySelectorAll('table.sortable tbody tr'), (r) => r.cells[k].dataset.value)"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page()
        try:
            page.goto(path.as_uri())
            first = [float(v) for v in page.evaluate(column, 2)]
            assert len(first) > 2 and first == sorted(first)  # as written: by the first objective
            header = page.locator("table.sortable th").nth(0)  # trial number
            header.click()
            numbers = [int(v) for v in page.evaluate(column, 0)]
            assert numbers == sorted(numbers) and len(set(numbers)) > 1
            assert "sorted-asc" in header.get_attribute("class")
            header.click()
            assert [int(v) for v in page.evaluate(column, 0)] == sorted(numbers, reverse=True)
            assert "sorted-desc" in header.get_attribute("class")
            page.locator("table.sortable th").nth(3).click()  # a numeric objective, not as text
            memory = [float(v) for v in page.evaluate(column, 3)]
            assert memory == sorted(memory)
        finally:
            browser.close()
