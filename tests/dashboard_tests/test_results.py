"""The read-only study view: records, Pareto front, read-only opening, clear errors."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from morsearch import store
from morsearch.errors import StorageError
from morsearch.search.results import list_studies, open_study, pareto_mask


def test_pareto_mask_mixed_directions():
    values = np.array([[1.0, 10.0], [2.0, 20.0], [2.0, 5.0], [1.0, 10.0], [3.0, 30.0]])
    # minimise the first, maximise the second: only (2, 5) is dominated (by (2, 20))
    mask = pareto_mask(values, ["minimize", "maximize"])
    assert mask.tolist() == [True, True, False, True, True]
    mask = pareto_mask(values, ["minimize", "minimize"])
    assert mask.tolist() == [True, False, True, True, False]


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(300, 3)).astype(float)  # many ties
    directions = ["minimize", "maximize", "minimize"]
    losses = values * np.array([1, -1, 1])
    brute = [not any(np.all(o <= v) and np.any(o < v) for o in losses) for v in losses]
    assert pareto_mask(values, directions).tolist() == brute


def test_view_joins_records(study_store):
    url, name = study_store
    view = open_study(url, name)
    assert view.objective_names == ("val_nll", "peak_memory_mb", "decode_tokens_per_s")
    assert view.directions == ("minimize", "minimize", "maximize")
    assert view.reference_point == (6.0, 400.0, 0.0)
    trials = view.trials()
    states = [t.state for t in trials]
    assert states.count("COMPLETE") == 26 and states.count("FAIL") == 1 and states.count("RUNNING") == 1
    baselines = {t.baseline for t in trials if t.baseline}
    assert baselines == {"vanilla", "recursive"}
    for done in trials[4], trials[5]:  # one joined from the ms_ records, one from user attributes
        assert done.model_config["d_model"] == done.params["d_model"]
        assert len(done.curve) == 6 and done.curve[0][0] == 0
        assert done.routing[0] == 1.0 and done.phase_seconds["measure"] == 0.8
        assert "memory_cap" in done.constraints and done.gpu_seconds is not None
    assert trials[4].sections["budget"]["kind"] == "tokens" and trials[4].measurement["peak_memory_bytes"] > 0
    assert trials[4].gpu_seconds == 4.0 + trials[4].params["num_recursions"]
    failed = next(t for t in trials if t.state == "FAIL")
    assert failed.failure_reason.startswith("oom")
    # a joined record is reused as long as nothing changed (incremental refresh)
    assert view.trials()[4] is trials[4]
    view.close()


def test_pareto_trials_are_non_dominated(study_store):
    view = open_study(*study_store)
    front = view.pareto_trials()
    done = [t for t in view.trials() if t.is_complete and t.feasible]
    assert front
    for t in front:
        for o in done:
            better_or_equal = o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values[2] >= t.values[2]
            assert not (better_or_equal and o.values != t.values)
    view.close()


def test_open_is_read_only(study_store, tmp_path):
    url, name = study_store
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        before = conn.execute("select count(*) from trials").fetchone()
    view = open_study(url, name)
    # the engine underneath refuses writes
    backend = view._study._storage._backend
    with backend.engine.connect() as connection, pytest.raises(Exception, match="readonly"):
        connection.exec_driver_sql("create table ms_probe (x int)")
    view.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from trials").fetchone() == before


def test_missing_and_malformed_stores(tmp_path, study_store):
    with pytest.raises(StorageError, match="no such store file"):
        open_study(f"sqlite:///{tmp_path}/nope.db", "x")
    assert not (tmp_path / "nope.db").exists()  # opening never creates a store
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database at all" * 10)
    with pytest.raises(StorageError, match="cannot open the store"):
        open_study(f"sqlite:///{bad}", "x")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x int)").connection.commit()
    with pytest.raises(StorageError, match="not a morsearch study store"):
        list_studies(f"sqlite:///{other}")
    with pytest.raises(StorageError, match="not a storage URL"):
        open_study("::::", "x")
    url, _ = study_store
    with pytest.raises(StorageError, match="studies there: demo"):
        open_study(url, "typo")
    assert list_studies(url) == ["demo"]
    assert open_study(url).name == "demo"  # the only study is picked


def test_records_written_after_tell_are_joined_on_refresh(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'late.db'}"
    study = optuna.create_study(storage=url, study_name="late", directions=["minimize", "maximize"])
    study.tell(study.ask(), [1.0, 2.0])
    engine = store.get_engine(url)
    store.ensure_schema(engine)
    view = open_study(url, "late")
    assert view.trials()[0].curve == ()
    # the worker writes its ms_ record just after study.tell
    fields = {"d_model": 32, "num_heads": 4, "ffn_dim": 64, "num_layers": 2}
    record = store.TrialRecord(
        study_name="late", trial_number=0, state="complete", config_hash="x", model_config=fields, curve=((8, 3.0),)
    )
    store.write_trial(engine, record)
    assert view.trials()[0].curve == ((8.0, 3.0),)
    assert view.trials()[0].model_config == fields
    view.close()
    store.dispose_engines()
