"""Dashboard speed with 5,000 trials in the store: first render and each filter under a second.

    python -m benchmarks.dashboard_scale            # 5,000 trials: writes benchmarks/results/dashboard_scale.json
    python -m benchmarks.dashboard_scale --quick    # 300 trials, server side only, seconds (not written)

The store is a real one: an Optuna study (3 objectives, a MoR design space of 8
choices, 2% failed trials) with morsearch's ms_ records (curve, routing, phases,
measurement) beside it, built in memory and copied to a SQLite file.

What is timed:
  server_listening_s  ``make_server(warm=False)``: open and check the store, bind the port; what
                      ``morsearch dashboard`` takes before its URL answers (it reads the trials
                      in the background from there; a page asking meanwhile waits for them)
  cold_start_s        that plus ``app.warm()``: every trial read and the default view drawn, i.e.
                      ``make_server`` (its default, warm=True), as timed before the server listened
  cli_start_s         ``morsearch dashboard`` as a user starts it (a new process, imports included):
                      until it prints its URL, and until it prints that the trials are read
  read_s              reading the 5,000 trials alone: ``StudyView.trials()`` (Optuna's and the
                      store's ORM, what the app used to read with) and the app's ``LiveStudyView``
  api.*               server side, uncached: each view and each filter's JSON (figure included)
  browser.*           headless Chromium (when installed), in a fresh browser: ``first_visit_*`` on
                      the first visit (plotly.js downloaded and compiled), ``first_*`` on a
                      reload (plotly.js in the browser's caches). ``*render_s``: from navigation
                      start to the front's points painted (the page's canvas preview, drawn before
                      plotly.js runs, or plotly's plot); ``*interactive_s``: to plotly's plot
                      painted (hover, click, zoom). Both are read from the page's clock
                      (``performance.now()`` once the frame is painted); ``*_wall_s`` is when
                      Playwright saw it, later by however long the page's main thread stayed busy
                      after the paint (plotly.js compiling), since Playwright polls from inside the
                      page. Then each filter from the click on "Apply" to the redrawn front
                      (uncached on the server), as a user sees it

The dashboard uses no GPU; on a CUDA machine this measures the same thing (the laptop
the issue names is the reference, this machine's CPU is the proxy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import target, write_result

OBJECTIVES = ["val_nll", "peak_memory_mb", "decode_tokens_per_s"]
DIRECTIONS = ["minimize", "minimize", "maximize"]
CHROMIUM = "/usr/bin/chromium"


def _trial_design(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """One point of a MoR design space: (Optuna params, ModelConfig fields)."""
    router = rng.choice(["none", "expert_choice", "token_choice"])
    nr = rng.choice([2, 3, 4])
    sharing = "middle_cycle" if router != "none" else rng.choice(["cycle", "middle_cycle", "sequence"])
    d_model = rng.choice([128, 192, 256, 384, 512])
    blocks = rng.randint(1, 4)
    layers = nr * blocks + (2 if sharing == "middle_cycle" else 0)
    params: dict[str, Any] = {
        "router": router,
        "num_recursions": nr,
        "sharing": sharing,
        "d_model": d_model,
        "shared_blocks": blocks,
        "kv_strategy": rng.choice(["recursion_wise", "recursive_sharing"]),
        "learning_rate": 10 ** rng.uniform(-3.5, -2.5),
    }
    fields = {
        "d_model": d_model,
        "num_heads": d_model // 64,
        "ffn_dim": d_model * 8 // 3 // 8 * 8,
        "num_layers": layers,
        "num_recursions": nr,
        "sharing": sharing,
        "router": router,
        "kv_strategy": params["kv_strategy"],
    }
    if router != "none":
        params["router_gate"] = rng.choice(["sigmoid", "tanh"] if router == "expert_choice" else ["softmax"])
        fields["router_gate"] = params["router_gate"]
    return params, fields


def build_store(path: Path, num_trials: int, seed: int = 0) -> float:
    """Write a study of ``num_trials`` trials with ms_ records to ``path``; returns seconds taken."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from morsearch import store

    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")  # in memory: no fsync per trial
    study = optuna.create_study(storage=storage, study_name="scale", directions=DIRECTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVES)
    study.set_user_attr("reference_point", [6.0, 4096.0, 0.0])
    distributions = {
        "router": CategoricalDistribution(["none", "expert_choice", "token_choice"]),
        "num_recursions": IntDistribution(2, 4),
        "sharing": CategoricalDistribution(["cycle", "middle_cycle", "sequence"]),
        "d_model": CategoricalDistribution([128, 192, 256, 384, 512]),
        "shared_blocks": IntDistribution(1, 4),
        "kv_strategy": CategoricalDistribution(["recursion_wise", "recursive_sharing"]),
        "learning_rate": FloatDistribution(10**-3.5, 10**-2.5, log=True),
        "router_gate": CategoricalDistribution(["sigmoid", "tanh", "softmax"]),
    }
    trials, records = [], []
    for number in range(num_trials):
        params, fields = _trial_design(rng)
        size = fields["d_model"] ** 2 * fields["num_layers"] / fields["num_recursions"] * 12 / 2**20
        nll = 4.2 - 0.35 * math.log(size + 1) - 0.05 * fields["num_recursions"] + rng.gauss(0, 0.08)
        memory = 40 + 6 * size / (1.5 if fields["kv_strategy"] == "recursive_sharing" else 1) + rng.uniform(0, 30)
        speed = 4e5 / (fields["d_model"] * fields["num_layers"]) * (1.6 if params["router"] != "none" else 1)
        speed *= rng.uniform(0.85, 1.15)
        failed = rng.random() < 0.02
        attrs = {"baseline": "vanilla"} if number == 0 else {"baseline": "recursive"} if number == 1 else {}
        if failed:
            attrs["failure_reason"] = "oom: CUDA out of memory"
        trials.append(
            create_trial(
                state=TrialState.FAIL if failed else TrialState.COMPLETE,
                params=params,
                distributions={k: distributions[k] for k in params},
                values=None if failed else [nll, memory, speed],
                user_attrs=attrs,
            )
        )
        curve = tuple((k * 65536, nll + 2.0 / (k + 1)) for k in range(12))
        steps = fields["num_recursions"]
        records.append(
            store.TrialRecord(
                study_name="scale",
                trial_number=number,
                state="failed" if failed else "complete",
                config_hash=store.config_hash(fields),
                model_config=fields,
                failure_reason="oom" if failed else None,
                curve=() if failed else curve,
                routing=[round(1 - j / steps, 3) for j in range(steps)],
                phase_seconds={"build": 1.0, "train": 60.0 + rng.uniform(0, 60), "measure": 8.0},
                device_seconds=70.0 + rng.uniform(0, 60),
                measurement=None
                if failed
                else {"peak_memory_bytes": int(memory * 2**20), "decode_tokens_per_s": speed},
            )
        )
    study.add_trials(trials)
    store.ensure_schema(storage.engine)
    for record in records:
        store.write_trial(storage.engine, record)
    raw = storage.engine.raw_connection()
    try:
        with sqlite3.connect(path) as target_db:
            raw.driver_connection.backup(target_db)
    finally:
        raw.close()
    storage.engine.dispose()
    return time.perf_counter() - started


FILTERS: dict[str, dict[str, list[str]]] = {
    "memory_le_median": {"bound.peak_memory_mb": [",{mem_median}"]},
    "throughput_ge_median": {"bound.decode_tokens_per_s": ["{speed_median},"]},
    "router_expert_choice": {"choice.router": ["expert_choice"]},
    "recursions_2_or_3": {"choice.num_recursions": ["2", "3"]},
    "combined": {
        "bound.peak_memory_mb": [",{mem_median}"],
        "bound.decode_tokens_per_s": ["{speed_median},"],
        "choice.router": ["expert_choice", "token_choice"],
    },
}


def _time_api(base: str, medians: dict[str, float]) -> dict[str, float]:
    from urllib.parse import urlencode

    timings = {}

    def get(name: str, query: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        with urllib.request.urlopen(base + "api/front?" + urlencode(query), timeout=60) as response:
            json.load(response)
        timings[name] = round(time.perf_counter() - started, 4)

    for view in ("0-1", "0-2", "1-2", "3d"):
        get(f"view_{view}", [("study", "scale"), ("view", view)])
    for name, spec in FILTERS.items():
        query = [("study", "scale"), ("view", "0-1")]
        query += [(k, v.format(**medians)) for k, values in spec.items() for v in values]
        get(f"filter_{name}", query)
    return timings


def _time_cli_start(url: str, export_dir: Path) -> dict[str, float]:
    """``morsearch dashboard`` in a new process: seconds until it prints its URL and its trials are read."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "morsearch", "dashboard", "--storage", url, "--port", "0"]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--export-dir", str(export_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out: dict[str, float] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "dashboard at http" in line:
                out["listening_s"] = round(time.perf_counter() - started, 3)
            elif "trials read in" in line:
                out["trials_read_s"] = round(time.perf_counter() - started, 3)
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    return out


def _time_browser(base: str, medians: dict[str, float]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    drawn = "() => document.getElementById('front').dataset.drawnAtMs !== undefined"
    interactive = "() => document.getElementById('front').dataset.interactiveAtMs !== undefined"
    out: dict[str, Any] = {}

    def visit(prefix: str) -> None:
        started = time.perf_counter()
        page.goto(base)
        page.wait_for_function(drawn, timeout=60_000)
        out[f"{prefix}render_wall_s"] = round(time.perf_counter() - started, 4)
        page.wait_for_function(interactive, timeout=60_000)
        out[f"{prefix}interactive_wall_s"] = round(time.perf_counter() - started, 4)
        front = json.loads(page.evaluate("JSON.stringify(document.getElementById('front').dataset)"))
        out[f"{prefix}render_s"] = int(front["drawnAtMs"]) / 1000
        out[f"{prefix}interactive_s"] = int(front["interactiveAtMs"]) / 1000
        out[f"{prefix}drawn_first_by"] = front.get("drawnFirstBy")
        out[f"{prefix}in_page_ms"] = {k: v for k, v in front.items() if k.endswith("Ms")}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        visit("first_visit_")  # first visit ever: plotly.js (4.8 MB) downloaded, compiled and run
        visit("first_")  # a reload (or a new tab): plotly.js comes from the browser's caches

        def apply(name: str, fill: dict[str, str], uncheck: dict[str, list[str]]) -> None:
            page.click("#reset")
            page.wait_for_function("document.getElementById('shown').textContent.startsWith('showing')")
            page.wait_for_timeout(200)
            for selector, value in fill.items():
                page.fill(selector, value)
            for param, levels in uncheck.items():
                for level in levels:
                    page.uncheck(f"[data-choice='{param}'] input[value='{level}']")
            before = page.inner_text("#shown")
            started = time.perf_counter()
            page.click("#apply")
            page.wait_for_function("(t) => document.getElementById('shown').textContent !== t", arg=before)
            page.wait_for_function("() => new Promise((r) => requestAnimationFrame(() => r(true)))")
            out[f"filter_{name}_s"] = round(time.perf_counter() - started, 4)
            out[f"filter_{name}_shown"] = page.inner_text("#shown").split(";")[0]

        mem, speed = f"{medians['mem_median']}", f"{medians['speed_median']}"
        apply("memory_le_median", {"[data-bound='peak_memory_mb'] .hi": mem}, {})
        apply("throughput_ge_median", {"[data-bound='decode_tokens_per_s'] .lo": speed}, {})
        apply("router_expert_choice", {}, {"router": ["none", "token_choice"]})
        apply("recursions_2_or_3", {}, {"num_recursions": ["4"]})
        apply(
            "combined",
            {"[data-bound='peak_memory_mb'] .hi": mem, "[data-bound='decode_tokens_per_s'] .lo": speed},
            {"router": ["none"]},
        )
        started = time.perf_counter()
        page.click("#views button[data-view='3d']")
        page.wait_for_function("document.querySelector('#front .gl-container canvas, #front .scene') !== null")
        out["view_3d_s"] = round(time.perf_counter() - started, 4)
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "dashboard_scale.png"))
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 trials, server side only; result not written")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument(
        "--store", type=Path, default=None, help="keep the built store here and reuse it next time (it takes minutes)"
    )
    args = parser.parse_args()
    num_trials = args.trials or (300 if args.quick else 5000)
    load_at_start = os.getloadavg()[0]  # the machine may be shared: both ends of the run are recorded

    from morsearch.dashboard.app import make_server
    from morsearch.dashboard.reader import open_live_study
    from morsearch.search.results import open_study

    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "scale.db"
        build_s = build_store(path, num_trials) if not path.exists() else float("nan")
        store_bytes = path.stat().st_size
        url = f"sqlite:///{path}"
        read_s = {}
        for name, opener in (("study_view", open_study), ("live_study_view", open_live_study)):
            view = opener(url, "scale")
            started = time.perf_counter()
            trials = view.trials()
            read_s[name] = round(time.perf_counter() - started, 3)
            view.close()
        done = [t for t in trials if t.is_complete]
        medians = {
            "mem_median": round(statistics.median(t.values[1] for t in done), 1),
            "speed_median": round(statistics.median(t.values[2] for t in done), 1),
        }
        started = time.perf_counter()
        server, app = make_server(url, port=0, export_dir=Path(tmp) / "exports", warm=False)
        listening_s = time.perf_counter() - started
        app.warm()
        cold_start_s = time.perf_counter() - started
        cli_start_s = _time_cli_start(url, Path(tmp) / "exports")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            api = _time_api(base, medians)
            app._cache.clear()  # the browser's filters must not find the API run's answers
            app.warm()  # as a freshly started server has it: the default view drawn
            have_browser = Path(CHROMIUM).exists()
            try:
                import playwright  # noqa: F401
            except ImportError:
                have_browser = False
            browser = _time_browser(base, medians) if have_browser and not args.quick else {}
        finally:
            server.shutdown()
            server.server_close()
            app.close()

    raw = {
        "load_average_1m_at_start": round(load_at_start, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "trials": num_trials,
        "completed": len(done),
        "store_mib": round(store_bytes / 2**20, 1),
        "build_store_s": round(build_s, 2) if math.isfinite(build_s) else "reused",
        "server_listening_s": round(listening_s, 3),
        "cold_start_s": round(cold_start_s, 3),
        "cli_start_s": cli_start_s,
        "read_s": read_s,
        "medians": medians,
        "api_s": api,
        "browser": browser or "not measured (quick run or no Chromium/Playwright)",
    }
    print(json.dumps(raw, indent=2))
    api_filters = [v for k, v in api.items() if k.startswith("filter_")]
    targets = [
        target("api_max_view_or_filter_s", max(api.values()), 1.0, higher_is_better=False),
        target("api_max_filter_s", max(api_filters), 1.0, higher_is_better=False),
    ]
    if browser:
        browser_filters = [v for k, v in browser.items() if k.startswith("filter_") and k.endswith("_s")]
        targets += [
            target("browser_first_render_s", browser["first_render_s"], 1.0, higher_is_better=False),
            target("browser_first_visit_render_s", browser["first_visit_render_s"], 1.0, higher_is_better=False),
            target("browser_first_interactive_s", browser["first_interactive_s"], 1.0, higher_is_better=False),
            target("browser_max_filter_s", max(browser_filters), 1.0, higher_is_better=False),
        ]
    for t in targets:
        print(f"{t['name']}: {t['value']:.3f} (target <= {t['target']}) {'met' if t['met'] else 'NOT met'}")
    if args.quick:
        print("quick run: result not written")
        return
    print(f"written: {write_result('dashboard_scale', raw, targets)}")


if __name__ == "__main__":
    main()
