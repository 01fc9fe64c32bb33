"""``morsearch search`` end to end: worker processes, live progress, status and export."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from morsearch import store
from morsearch.cli import main
from morsearch.config import ModelConfig, load_config
from morsearch.errors import StorageError
from morsearch.search.launch import launch, status_of
from search_tests.test_objective import TINY_BUDGET, tiny_space_file

ROOT = Path(__file__).parents[2]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the default store goes to ./trials/
    # The worker processes import morsearch from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    yield tmp_path
    store.dispose_engines()


def test_search_runs_workers_to_the_exact_total_then_status_and_export(in_tmp: Path, capsys) -> None:
    space = tiny_space_file(in_tmp, n_trials=2)
    progress = launch(space, workers=2, refresh_seconds=0.2)
    assert progress.complete + progress.pruned == 2 and progress.failed == 0 and progress.running == 0
    assert progress.front and progress.hypervolume > 0
    url = f"sqlite:///{in_tmp / 'trials' / 'tiny.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["baseline"] for t in study.trials} == {"vanilla", "recursive"}
    records = store.read_trials(store.get_engine(url), "tiny")
    assert [r.trial_number for r in records] == [0, 1] and all(r.curve and r.measurement for r in records)
    assert len(list((in_tmp / "trials" / "tiny-logs").glob("worker-*.log"))) == 2

    (report,) = status_of(None, "tiny")
    assert report.progress.complete == 2 and {b[0] for b in report.best} == set(study.metric_names)

    with pytest.raises(SystemExit) as exited:
        main(["export", "--study", "tiny", "--trial", "0", "--out", str(in_tmp / "best.yaml")])
    assert exited.value.code == 0
    exported = load_config(in_tmp / "best.yaml", ModelConfig, section="model")
    assert exported.model_dump(mode="json") == study.trials[0].user_attrs["model_config"]
    assert store.read_exports(store.get_engine(url), "tiny")[0]["trial_number"] == 0


def test_a_changed_space_needs_its_own_study(in_tmp: Path) -> None:
    launch(tiny_space_file(in_tmp, n_trials=1), workers=0)
    with pytest.raises(StorageError, match="different space"):
        launch(tiny_space_file(in_tmp, n_trials=1, seed=123), workers=0)


def test_status_without_a_store_says_how_to_start(in_tmp: Path) -> None:
    with pytest.raises(StorageError, match="morsearch search"):
        status_of(None, "nothing-here")


def test_quickstart_finishes_on_cpu(in_tmp: Path, capsys) -> None:
    """The README's first command, unchanged: the shipped quickstart space with 2 workers (about a minute)."""
    shutil.copy(ROOT / "search_spaces" / "quickstart.yaml", in_tmp / "quickstart.yaml")
    progress = launch(in_tmp / "quickstart.yaml", workers=2)
    url = f"sqlite:///{in_tmp / 'trials' / 'quickstart.db'}"
    study = optuna.load_study(study_name="quickstart", storage=url)
    trials = study.get_trials(deepcopy=False)
    details = {t.number: t.user_attrs.get("failure_detail") for t in trials if t.state == TrialState.FAIL}
    assert progress.done == progress.n_trials == 16 and progress.failed == 0, details
    assert progress.front and progress.hypervolume > 0 and progress.running == progress.waiting == 0
    # Every finished trial has its rich record, in the same state; completed ones are fully measured.
    finished = {t.number: t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(finished) == progress.complete + progress.pruned
    records = {r.trial_number: r for r in store.read_trials(store.get_engine(url), "quickstart")}
    assert set(finished) <= set(records)
    for number, trial in finished.items():
        record = records[number]
        assert record.state == trial.state.name.lower() and record.model_config == trial.user_attrs["model_config"]
        assert record.curve and record.phase_seconds["trial"] > 0
        if trial.state == TrialState.COMPLETE:
            assert len(record.curve) >= 2 and record.curve[-1][1] == record.val_nll
            assert [record.objectives[name] for name in study.metric_names] == trial.values
            assert record.measurement["peak_memory_bytes"] > 0
    # status and export work on the finished store.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["status", "--study", "quickstart"])
    assert exited.value.code in (0, None)
    assert f"{progress.n_trials}/{progress.n_trials} finished" in capsys.readouterr().out
    pick = progress.front[0].number
    with pytest.raises(SystemExit) as exited:
        main(["export", "--study", "quickstart", "--trial", str(pick), "--out", str(in_tmp / "picked.yaml")])
    assert exited.value.code == 0
    exported = load_config(in_tmp / "picked.yaml", ModelConfig, section="model")
    assert exported.model_dump(mode="json") == finished[pick].user_attrs["model_config"]


def test_ctrl_c_stops_a_worker_cleanly_and_requeues_its_trial(in_tmp: Path) -> None:
    space = tiny_space_file(in_tmp, n_trials=1, budget={**TINY_BUDGET, "value": 1e9})  # long enough to interrupt
    launch(space, workers=0)
    url = f"sqlite:///{in_tmp / 'trials' / 'tiny.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "morsearch", "worker", "--study", "tiny"], env=os.environ.copy())
    study = optuna.load_study(study_name="tiny", storage=url)
    deadline = time.monotonic() + 120
    while not any(t.state == TrialState.RUNNING for t in study.trials):
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never started a trial"
        time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=120) == 0
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    interrupted = trials[0]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["failure_reason"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.params == interrupted.params
    assert store.read_trial(store.get_engine(url), "tiny", interrupted.number) is None  # no half record
