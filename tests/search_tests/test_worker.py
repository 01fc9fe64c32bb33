"""Workers against real storages: exact totals, crash retry, failures, interrupts.

The objectives here are small real computations (no mocks); the proxy-training
objective has its own tests in test_objective.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from store_tests.pg import pg_schema_url

from morsearch import store
from morsearch.errors import TrainingError
from morsearch.search.study import create_study, open_storage
from morsearch.search.worker import (
    GracefulStop,
    Outcome,
    TrialInterrupted,
    Worker,
    classify_failure,
    counted_trials,
    run_worker,
)

DIRECTIONS = ("minimize", "minimize")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        store.dispose_engines()
    else:
        with pg_schema_url() as url:
            yield url


def _new_study(url: str, name: str = "w") -> None:
    storage, engine = open_storage(url)
    create_study(storage, engine, name, DIRECTIONS, ("f1", "f2"), sampler=optuna.samplers.RandomSampler(seed=0))
    storage.engine.dispose()
    store.dispose_engines()  # children must not inherit pooled connections


def _two_objectives(trial: optuna.Trial, pause: float = 0.02) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_int("y", 0, 100)
    time.sleep(pause)  # long enough for workers to overlap
    return x**2 + y / 100, (1 - x) ** 2 + (100 - y) / 100


def _worker_process(url: str, n_trials: int, out, marker: str | None = None) -> None:
    """One worker; with ``marker``, its first trial announces itself and then hangs (to be killed)."""
    first = [True]

    def objective(trial: optuna.Trial):
        values = _two_objectives(trial)
        if marker and first[0]:
            first[0] = False
            Path(marker).write_text(str(trial.number))
            time.sleep(600)
        return values

    summary = run_worker(url, "w", objective, n_trials, heartbeat_interval=1, grace_period=2, poll_seconds=0.2)
    out.put(summary.trial_numbers)


def _finished(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="w", storage=url).get_trials(deepcopy=False)


def test_eight_workers_run_exactly_n_trials(storage_url: str) -> None:
    _new_study(storage_url)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(storage_url, 24, out)) for _ in range(8)]
    for p in procs:
        p.start()
    numbers = [n for _ in procs for n in out.get(timeout=240)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    trials = _finished(storage_url)
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(numbers) == list(range(24))  # every trial run by exactly one worker


def test_sqlite_two_workers_and_restart_continues(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    _new_study(url)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(url, 10, out)) for _ in range(2)]
    for p in procs:
        p.start()
    numbers = [n for _ in procs for n in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(numbers) == list(range(10))
    # A restart with a larger total continues the same study where it stopped.
    summary = run_worker(url, "w", _two_objectives, 12)
    assert summary.trial_numbers == [10, 11]
    assert run_worker(url, "w", _two_objectives, 12).trial_numbers == []
    store.dispose_engines()


def test_killed_worker_trial_is_retried_and_completes(storage_url: str, tmp_path: Path) -> None:
    _new_study(storage_url)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    marker = tmp_path / "started"
    doomed = ctx.Process(target=_worker_process, args=(storage_url, 4, out, str(marker)))
    doomed.start()
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "the doomed worker never started a trial"
        time.sleep(0.05)
    killed_number = int(marker.read_text())
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join()
    # A second worker sweeps the stale trial, re-runs its parameters and finishes the study.
    survivor = ctx.Process(target=_worker_process, args=(storage_url, 4, out))
    survivor.start()
    out.get(timeout=120)
    survivor.join(timeout=30)
    trials = _finished(storage_url)
    killed = trials[killed_number]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_number]
    assert killed.state == TrialState.FAIL
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert counted_trials(trials) == 4
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def test_failures_are_recorded_and_the_worker_goes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    _new_study(url)
    errors = iter(
        [
            RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"),
            TrainingError("loss became nan at step 3"),
            None,
        ]
    )

    def objective(trial: optuna.Trial):
        error = next(errors)
        if error is not None:
            raise error
        return _two_objectives(trial, pause=0)

    summary = run_worker(url, "w", objective, 3)
    assert (summary.failed, summary.completed) == (2, 1)
    trials = _finished(url)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure_reason"] == "oom"
    assert trials[0].user_attrs["requested_memory_bytes"] == 2 * 2**30
    assert trials[1].user_attrs["failure_reason"] == "nan"
    assert trials[2].state == TrialState.COMPLETE
    store.dispose_engines()


def test_outcome_record_is_written_after_tell(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _new_study(url)

    def objective(trial: optuna.Trial) -> Outcome:
        values = _two_objectives(trial, pause=0)
        record = store.TrialRecord(
            study_name="w",
            trial_number=trial.number,
            state="complete",
            config_hash="h",
            model_config={"x": trial.params["x"]},
            curve=((1, 2.0),),
        )
        return Outcome(TrialState.COMPLETE, values, record, attrs={"config_hash": "h"})

    run_worker(url, "w", objective, 2)
    records = store.read_trials(store.get_engine(url), "w")
    assert [r.trial_number for r in records] == [0, 1] and records[0].curve == ((1, 2.0),)
    assert _finished(url)[1].user_attrs["config_hash"] == "h"
    store.dispose_engines()


def test_stop_request_interrupts_and_requeues(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'i.db'}"
    _new_study(url)
    stop = GracefulStop()

    def objective(trial: optuna.Trial):
        trial.suggest_float("x", 0.0, 1.0)
        stop.event.set()  # as the first Ctrl-C would
        raise TrialInterrupted

    summary = run_worker(url, "w", objective, 5, stop=stop)
    assert summary.interrupted == 1 and summary.completed == 0
    trials = _finished(url)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure_reason"] == "interrupted"
    assert trials[1].state == TrialState.WAITING and trials[1].params == trials[0].params
    # The restart picks the interrupted trial up first, with the same parameters.
    seen = []

    def resume(trial: optuna.Trial):
        seen.append(trial.suggest_float("x", 0.0, 1.0))
        return _two_objectives(trial, pause=0)

    run_worker(url, "w", resume, 5)
    assert seen[0] == trials[0].params["x"]
    assert counted_trials(_finished(url)) == 5
    store.dispose_engines()


def test_second_signal_waits_for_the_critical_section() -> None:
    stop = GracefulStop()
    stop._handle(signal.SIGINT, None)
    assert stop.event.is_set()
    with pytest.raises(KeyboardInterrupt):
        with stop.critical():
            stop._handle(signal.SIGINT, None)  # deferred ...
            completed = True  # ... so this line still runs
    assert completed


def test_classify_failure() -> None:
    assert classify_failure(RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB"))[::2] == (
        "oom",
        512 * 2**20,
    )
    assert classify_failure(ValueError("boom"))[0] == "error"


def test_worker_refuses_a_space_that_breaks_its_caps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    _new_study(url)

    def objective(trial: optuna.Trial) -> Outcome:
        trial.suggest_float("x", 0.0, 1.0)
        return Outcome(TrialState.FAIL, attrs={"prefiltered": True, "failure_reason": "infeasible"})

    storage, engine = open_storage(url)
    study = optuna.load_study(study_name="w", storage=storage)
    worker = Worker(study, storage, engine, objective, 2, max_prefiltered=5)
    with pytest.raises(Exception, match="broke the space's caps"):
        worker.run()
    store.dispose_engines()
