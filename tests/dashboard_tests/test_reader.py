"""The live app's reader: the same records as ``StudyView``, refreshed incrementally."""

from __future__ import annotations

import pytest

from morsearch import store
from morsearch.dashboard.reader import open_live_study, study_names
from morsearch.errors import StorageError
from morsearch.search.results import open_study

from .conftest import copy_quickstart_store, fill_study, model_fields


def _both(url: str, name: str) -> tuple[list, list]:
    orm, live = open_study(url, name), open_live_study(url, name)
    try:
        return orm.trials(), live.trials()
    finally:
        orm.close()
        live.close()


def test_records_equal_the_study_views(study_store):
    # ms_ records (even trials) and user attributes (odd ones), a failure, a running trial
    expected, got = _both(*study_store)
    assert got == expected and len(got) == 28


def test_records_equal_on_a_real_quickstart_store(tmp_path):
    path = copy_quickstart_store(tmp_path / "quickstart.db")
    expected, got = _both(f"sqlite:///{path}", "quickstart")
    assert got == expected and any(t.curve for t in got)


def test_refresh_reads_only_what_changed(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    study = fill_study(url, "live", num_trials=4)
    view = open_live_study(url, "live")
    first = view.trials()
    again = view.trials()
    # finished trials with their ms_ record are not read again (the others wait for theirs a while)
    joined = [k for k, t in enumerate(first) if t.state == "COMPLETE" and t.number % 2 == 0]
    assert joined and all(again[k] is first[k] for k in joined)

    running = next(t for t in first if t.state == "RUNNING")
    trial = next(t for t in study.get_trials() if t.number == running.number)
    study._storage.set_trial_user_attr(trial._trial_id, "note", "half way")  # a worker mid-trial
    assert view.trial(running.number).user_attrs["note"] == "half way"

    # a trial told after the first read appears; its ms_ record, written after tell, is joined later
    new = study.ask()
    new.suggest_categorical("router", ["none", "expert_choice", "token_choice"])
    study.tell(new, [3.0, 50.0, 900.0])
    told = view.trial(new.number)
    assert told.state == "COMPLETE" and told.values == (3.0, 50.0, 900.0) and told.model_config is None
    fields = model_fields("none", 1, 64)
    engine = store.get_engine(url)
    store.write_trial(
        engine,
        store.TrialRecord(
            study_name="live",
            trial_number=new.number,
            state="complete",
            config_hash=store.config_hash(fields),
            model_config=fields,
            curve=((0, 4.0), (4096, 3.5)),
            measurement={"peak_memory_bytes": 50 * 2**20},
        ),
    )
    store.dispose_engines()
    joined = view.trial(new.number)
    assert joined.model_config == fields and joined.curve == ((0.0, 4.0), (4096.0, 3.5))
    assert joined.measurement["peak_memory_bytes"] == 50 * 2**20
    expected = open_study(url, "live")
    assert view.trials() == expected.trials()
    assert view.study_names() == study_names(view._engine) == ["live"]
    expected.close()
    view.close()


def test_open_keeps_the_study_views_errors(study_store, tmp_path):
    url, _ = study_store
    with pytest.raises(StorageError, match="no study 'nope'"):
        open_live_study(url, "nope")
    with pytest.raises(StorageError, match="no such store file"):
        open_live_study(f"sqlite:///{tmp_path / 'none.db'}", "x")
