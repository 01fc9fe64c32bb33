"""Workers against real storages: exact totals, crash retry, failures, interrupts.

The concurrency and crash tests run real ``morsearch worker`` processes on tiny
CPU proxies (the real ``SearchObjective``: proxy training and measurement, one
torch thread each); the tests of the worker's bookkeeping use small instant
objectives (no mocks).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console
from store_tests.pg import pg_schema_url

from morsearch import store
from morsearch.errors import TrainingError
from morsearch.search.launch import feasible, launch, worker_command
from morsearch.search.study import create_study, open_storage
from morsearch.search.worker import (
    PREFILTERED_ATTR,
    GracefulStop,
    Outcome,
    TrialInterrupted,
    Worker,
    classify_failure,
    counted_trials,
    run_worker,
)
from search_tests.test_objective import TINY_BUDGET, tiny_space_file

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


def _worker_process(url: str, n_trials: int, out) -> None:
    summary = run_worker(url, "w", _two_objectives, n_trials, heartbeat_interval=1, grace_period=2, poll_seconds=0.2)
    out.put(summary.trial_numbers)


def _finished(url: str, name: str = "w") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


@pytest.fixture
def real_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Worker processes of this checkout, one torch thread each, logs under ``tmp_path``."""
    monkeypatch.chdir(tmp_path)  # launch's worker logs of a PostgreSQL study go to ./trials/
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = str(Path(__file__).parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return tmp_path


def _real_space(folder: Path, n_trials: int, **budget) -> Path:
    # Early stopping off: every trial must end COMPLETE, so the totals below are exact.
    return tiny_space_file(
        folder, n_trials=n_trials, budget={**TINY_BUDGET, **budget}, early_stopping={"enabled": False}
    )


def _check_records_match(url: str, trials: list[optuna.trial.FrozenTrial]) -> list[store.TrialRecord]:
    """morsearch's rows: one per finished trial, same number, state, values and config as in Optuna."""
    records = [r for r in store.read_trials(store.get_engine(url), "tiny") if r.failure_reason != "infeasible"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(r.trial_number for r in records) == [t.number for t in complete]
    by_number = {r.trial_number: r for r in records}
    for trial in complete:
        record = by_number[trial.number]
        assert record.state == "complete" and record.optuna_trial_id == trial._trial_id
        assert [record.objectives[name] for name in ("val_nll", "peak_memory", "decode_tokens_per_s")] == trial.values
        assert record.model_config == trial.user_attrs["model_config"]
        assert record.config_hash == trial.user_attrs["config_hash"]
        assert len(record.curve) >= 2 and record.measurement["decode_tokens_per_s"] > 0
        assert record.hardware["cpu_threads"] == 1  # OMP_NUM_THREADS reached the worker's torch
    return records


def test_eight_workers_run_exactly_n_trials(storage_url: str, real_workers: Path) -> None:
    n_trials, workers = 10, 8
    out = io.StringIO()
    progress = launch(
        _real_space(real_workers, n_trials),
        workers=workers,
        storage=storage_url,
        console=Console(file=out, width=200),
        refresh_seconds=0.5,
    )
    assert (progress.complete, progress.failed, progress.running, progress.waiting) == (n_trials, 0, 0, 0)
    assert f"{n_trials}/{n_trials} · {n_trials} done · 0 running · 0 failed" in out.getvalue()
    # A configuration beyond the space's cap is rejected before training and counts toward no total.
    every = _finished(storage_url, "tiny")
    rejected = [t for t in every if t.user_attrs.get(PREFILTERED_ATTR)]
    assert all(t.state == TrialState.PRUNED and t.user_attrs["failure_reason"] == "infeasible" for t in rejected)
    assert all(not feasible(t) for t in rejected)  # told with their constraint values, for the sampler
    trials = [t for t in every if not t.user_attrs.get(PREFILTERED_ATTR)]
    assert len(trials) == n_trials  # nothing asked beyond the total
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("failure_detail") for t in trials]
    assert {t.user_attrs.get("baseline") for t in trials[:2]} == {"vanilla", "recursive"}
    # (Two workers may propose one configuration at the same time and both train it: reuse covers only
    # results already stored. What must not happen is one trial run twice, checked below.)
    records = _check_records_match(storage_url, trials)
    # Every trial was run by exactly one worker, and the workers really shared the study.
    done = [_worker_done(log) for log in sorted(real_workers.glob("**/tiny-logs/worker-*.log"))]
    assert len(done) == workers and sum(done) == n_trials
    assert len({r.worker for r in records}) >= 2


def _worker_done(log: Path) -> int:
    """Trials a worker completed, from the line ``morsearch worker`` ends with."""
    match = re.search(r"worker done: (\d+) complete", log.read_text())
    assert match, log.read_text()[-2000:]
    return int(match.group(1))


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


def _start_worker(url: str, index: int, log: Path) -> subprocess.Popen:
    # Heartbeat every second, dead after 4 s without one: a killed trial is retried within seconds.
    command = [*worker_command(url, "tiny", index), "--heartbeat", "1", "--grace", "4"]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def test_killed_worker_trial_is_retried_and_completes(storage_url: str, real_workers: Path) -> None:
    n_trials = 3
    # Wall-clock budget: every trial trains for 1.5 s, so the kill lands inside the training;
    # validations every 10 steps give each curve several points however fast this machine is.
    space = _real_space(real_workers, n_trials, kind="seconds", value=1.5, eval_every=10)
    launch(space, workers=0, storage=storage_url, console=Console(file=io.StringIO()))
    doomed = _start_worker(storage_url, 0, real_workers / "doomed.log")
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    deadline = time.monotonic() + 60
    while True:  # the objective sets model_config right before it starts training
        running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and "model_config" in t.user_attrs]
        if running:
            break
        assert time.monotonic() < deadline and doomed.poll() is None, (real_workers / "doomed.log").read_text()
        time.sleep(0.1)
    time.sleep(0.3)
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=30) == -signal.SIGKILL
    (killed,) = running
    assert _finished(storage_url, "tiny")[killed.number].state == TrialState.RUNNING  # killed mid-trial
    assert store.read_trial(store.get_engine(storage_url), "tiny", killed.number) is None

    # Another worker finds the trial stale, fails it, re-runs its parameters and finishes the study.
    survivor = _start_worker(storage_url, 1, real_workers / "survivor.log")
    assert survivor.wait(timeout=120) == 0, (real_workers / "survivor.log").read_text()[-3000:]
    assert _worker_done(real_workers / "survivor.log") == n_trials
    every = _finished(storage_url, "tiny")
    killed = every[killed.number]
    trials = [t for t in every if not t.user_attrs.get(PREFILTERED_ATTR)]  # rejected ones count toward nothing
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == killed.params and retry.user_attrs["config_hash"] == killed.user_attrs["config_hash"]
    assert retry.user_attrs.get("reused_from") is None  # trained again: the killed run left no result
    # Exactly n_trials count: the killed one and its retry once, nothing else failed or duplicated.
    assert counted_trials(trials) == n_trials and len(trials) == n_trials + 1
    assert [t.number for t in trials if t.state != TrialState.COMPLETE] == [killed.number]
    _check_records_match(storage_url, trials)


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
        trial.set_constraint("cap", 1.0)
        return Outcome(TrialState.PRUNED, attrs={PREFILTERED_ATTR: True, "failure_reason": "infeasible"})

    storage, engine = open_storage(url)
    study = optuna.load_study(study_name="w", storage=storage)
    worker = Worker(study, storage, engine, objective, 2, max_prefiltered=5)
    with pytest.raises(Exception, match="broke the space's caps"):
        worker.run()
    store.dispose_engines()


def test_tpe_learns_to_avoid_configurations_rejected_by_a_cap(tmp_path: Path) -> None:
    """Rejections are told as PRUNED with their constraint values (as SearchObjective does):
    TPE then ranks them among its bad trials. Told as FAIL, TPE ignores them and, here,
    proposes the rejected region over and over (measured: 90-100 % of proposals)."""
    url = f"sqlite:///{tmp_path / 'tpe.db'}"
    storage, engine = open_storage(url)
    study, _ = create_study(storage, engine, "w", DIRECTIONS, ("f1", "f2"), sampler=optuna.samplers.TPESampler(seed=0))
    proposals: list[float] = []

    def objective(trial: optuna.Trial) -> Outcome:
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        proposals.append(x)
        if x > 0.4:  # beyond the cap: 60 % of the space
            trial.set_constraint("cap", x - 0.4)
            return Outcome(TrialState.PRUNED, attrs={PREFILTERED_ATTR: True, "failure_reason": "infeasible"})
        return Outcome(TrialState.COMPLETE, ((x - 0.2) ** 2 + y, x + 1 - y))

    summary = Worker(study, storage, engine, objective, 30).run()
    assert summary.completed == 30 and summary.pruned == 0  # rejections count toward nothing ...
    assert summary.rejected == len(proposals) - 30  # ... and are reported as such
    after_startup = proposals[10:]
    assert sum(x > 0.4 for x in after_startup) / len(after_startup) < 0.3
    storage.engine.dispose()
    store.dispose_engines()
