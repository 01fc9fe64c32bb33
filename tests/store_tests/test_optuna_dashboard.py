"""The store stays an ordinary Optuna storage: stock optuna-dashboard opens it after a real search."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState
from search_tests.test_objective import tiny_space_file

from morsearch import store
from morsearch.search.launch import prepare_study, run_study_worker
from morsearch.search.space import load_search_space

# a dev dependency; skipped, as the browser tests are, where it is not installed (the GPU host)
optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard")


def _get(app: Any, path: str) -> tuple[str, bytes]:
    """One GET through the WSGI interface, as a server would send it."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda code, _headers, _exc=None: status.append(code)))
    return status[0], body


def test_optuna_dashboard_lists_the_study_and_its_trials(storage_url: str, tmp_path: Path) -> None:
    space = tiny_space_file(tmp_path, n_trials=2)  # the two baselines, trained and measured for real
    url = prepare_study(load_search_space(space), storage_url, space)
    summary = run_study_worker(url, "tiny", install_signals=False)
    assert summary.completed == 2
    store.dispose_engines()

    app = optuna_dashboard.wsgi(url)  # what `optuna-dashboard URL` serves, from the URL alone
    status, body = _get(app, "/api/studies")
    assert status.startswith("200"), body[:500]
    (summary_row,) = json.loads(body)["study_summaries"]
    assert summary_row["study_name"] == "tiny"
    assert summary_row["directions"] == ["minimize", "minimize", "maximize"]

    status, body = _get(app, f"/api/studies/{summary_row['study_id']}")
    assert status.startswith("200"), body[:500]
    detail = json.loads(body)
    assert detail["objective_names"] == ["val_nll", "peak_memory", "decode_tokens_per_s"]
    study = optuna.load_study(study_name="tiny", storage=url)
    shown = {t["number"]: t for t in detail["trials"]}
    assert sorted(shown) == [t.number for t in study.trials] == [0, 1]
    for trial in study.trials:
        row = shown[trial.number]
        assert trial.state == TrialState.COMPLETE and row["state"] == "Complete"
        assert [float(v) for v in row["values"]] == trial.values
        assert {p["name"] for p in row["params"]} == set(trial.params)
        attrs = {a["key"] for a in row["user_attrs"]}
        assert {"model_config", "config_hash", "baseline"} <= attrs
    assert detail["best_trials"]  # its Pareto front view has something to draw
    status, _ = _get(app, "/")  # the page itself
    assert status.startswith(("200", "302"))
