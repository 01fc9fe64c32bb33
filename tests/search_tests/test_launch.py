"""``launch``'s parts without a real search: GPU assignment, worker options, the live progress line."""

from __future__ import annotations

import datetime as dt
import io
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from rich.console import Console

from morsearch.cli import main
from morsearch.cli import search as cli_search
from morsearch.errors import MorsearchError
from morsearch.search import launch as launch_module
from morsearch.search import study as study_module
from morsearch.search.launch import (
    StudyProgress,
    describe_progress,
    hypervolume,
    launch,
    reference_point,
    run_study_worker,
    study_progress,
    worker_env,
)
from morsearch.search.space import load_search_space
from search_tests.test_objective import tiny_space_file

# --- which GPU and how many threads each local worker gets -------------------------------------


def test_gpus_are_dealt_round_robin_with_several_workers_per_gpu() -> None:
    envs = [worker_env(i, 5, [0, 1], base={"PATH": "/bin"}) for i in range(5)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "0", "1", "0"]
    assert all(env["PATH"] == "/bin" for env in envs)  # the rest of the environment is kept
    assert {worker_env(i, 3, [3], base={})["CUDA_VISIBLE_DEVICES"] for i in range(3)} == {"3"}
    # An inherited CUDA_VISIBLE_DEVICES is replaced, never appended to.
    assert worker_env(1, 2, [4, 6], base={"CUDA_VISIBLE_DEVICES": "0,1,2"})["CUDA_VISIBLE_DEVICES"] == "6"


def test_workers_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module.os, "cpu_count", lambda: 8)
    assert worker_env(0, 2, None, base={})["OMP_NUM_THREADS"] == "4"
    assert worker_env(3, 4, [0, 1], base={})["OMP_NUM_THREADS"] == "2"  # GPU workers as well
    assert worker_env(0, 16, None, base={})["OMP_NUM_THREADS"] == "1"  # never 0
    assert worker_env(0, 2, [], base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's choice wins
    env = worker_env(0, 2, None, base={"CUDA_VISIBLE_DEVICES": "2"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2"  # without --gpus the workers see what this process sees
    base = {"A": "1"}
    worker_env(0, 2, [0], base=base)
    assert base == {"A": "1"}


class _DoneProcess:
    """A worker process that has already exited cleanly."""

    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def terminate(self) -> None:  # pragma: no cover - never alive
        raise AssertionError("terminated a finished worker")


def test_launch_starts_one_worker_per_slot_on_the_given_gpus(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    started: list[tuple[list[str], dict[str, str]]] = []

    def popen(command, *, env, stdout, stderr):
        started.append((command, env))
        return _DoneProcess()

    monkeypatch.setattr(launch_module.subprocess, "Popen", popen)
    progress = launch(
        tiny_space_file(tmp_path, n_trials=2), workers=3, gpus=[0, 1], console=Console(file=io.StringIO())
    )
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["0", "1", "0"]
    url = f"sqlite:///{tmp_path / 'trials' / 'tiny.db'}"
    for index, (command, _) in enumerate(started):
        assert command[1:] == ["-m", "morsearch", "worker", "--storage", url, "--study", "tiny", "--index", str(index)]
    assert (progress.n_trials, progress.waiting, progress.done) == (2, 2, 0)  # the two baselines, never run


def test_cli_passes_gpus_and_workers_to_launch(tmp_path: Path, monkeypatch, capsys) -> None:
    seen = {}

    def fake_launch(space, **kwargs):
        seen.update(kwargs, space=space)
        return _progress(study_name="tiny")

    monkeypatch.setattr(launch_module, "launch", fake_launch)
    with pytest.raises(SystemExit) as exited:
        main(["search", str(tmp_path / "s.yaml"), "--workers", "4", "--gpus", "0, 1"])
    assert exited.value.code == 0
    assert (seen["workers"], seen["gpus"], seen["space"]) == (4, [0, 1], tmp_path / "s.yaml")
    with pytest.raises(SystemExit) as exited:
        main(["search", str(tmp_path / "s.yaml"), "--gpus", "0,x"])
    assert exited.value.code == 2 and "--gpus '0,x'" in capsys.readouterr().err
    assert cli_search._gpu_list(None) is None and cli_search._gpu_list("2") == [2]


def test_cli_worker_heartbeat_options(monkeypatch) -> None:
    seen = {}

    def fake_worker(url, study, **kwargs):
        seen.update(kwargs, url=url, study=study)
        return launch_module.WorkerSummary()

    monkeypatch.setattr(launch_module, "run_study_worker", fake_worker)
    with pytest.raises(SystemExit):
        main(["worker", "--study", "s", "--storage", "sqlite:///x.db", "--heartbeat", "2", "--grace", "7"])
    assert (seen["heartbeat_interval"], seen["grace_period"], seen["study"]) == (2, 7, "s")
    with pytest.raises(SystemExit):
        main(["worker", "--study", "s"])
    # The CLI's defaults are the study's (repeated there so --help needs no optuna).
    assert (seen["heartbeat_interval"], seen["grace_period"]) == (study_module.HEARTBEAT_S, study_module.GRACE_S)
    assert (cli_search.HEARTBEAT_S, cli_search.GRACE_S) == (study_module.HEARTBEAT_S, study_module.GRACE_S)


def test_a_grace_period_within_the_heartbeat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "never-opened.db"
    with pytest.raises(MorsearchError, match="grace period longer"):
        run_study_worker(f"sqlite:///{path}", "s", heartbeat_interval=5, grace_period=5)
    assert not path.exists()  # refused before anything was opened


# --- the live progress line ---------------------------------------------------------------------

START = dt.datetime(2026, 1, 1, 12, 0, 0)
X = {"x": FloatDistribution(0.0, 1.0)}


def _trial(state: TrialState, values=None, seconds: float = 0.0, **attrs) -> optuna.trial.FrozenTrial:
    finished = state.is_finished()
    return optuna.trial.FrozenTrial(
        number=0,
        trial_id=0,
        state=state,
        value=None,
        values=values,
        datetime_start=START if state != TrialState.WAITING else None,
        datetime_complete=START + dt.timedelta(seconds=seconds) if finished else None,
        params={"x": 0.5},
        distributions=X,
        user_attrs=attrs.get("user_attrs", {}),
        system_attrs=attrs.get("system_attrs", {}),
        intermediate_values={},
    )


def _progress(**changes) -> StudyProgress:
    fields = dict(
        study_name="s",
        n_trials=10,
        complete=0,
        pruned=0,
        failed=0,
        running=0,
        waiting=0,
        rejected=0,
        front=[],
        hypervolume=None,
        eta_seconds=None,
    )
    return StudyProgress(**{**fields, **changes})


@pytest.fixture
def busy_study() -> optuna.Study:
    """Two objectives (minimise, maximise) and a trial in every state the progress line distinguishes."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    add = study.add_trial
    add(_trial(TrialState.COMPLETE, [2.0, 5.0], seconds=60))  # 0: front
    add(_trial(TrialState.COMPLETE, [5.0, 8.0], seconds=120))  # 1: front
    add(_trial(TrialState.COMPLETE, [6.0, 4.0], seconds=90))  # 2: dominated by 0
    infeasible = {"constraints:params_unique <= 1M": 5.0}
    add(_trial(TrialState.COMPLETE, [1.0, 9.0], seconds=30, system_attrs=infeasible))  # 3: best, but breaks a cap
    add(_trial(TrialState.PRUNED, seconds=30))  # 4: stopped early
    add(_trial(TrialState.FAIL, seconds=5))  # 5: died, retried by 6
    add(_trial(TrialState.WAITING, system_attrs={"failed_trial": 5, "retry_history": [5]}))  # 6
    add(_trial(TrialState.FAIL, seconds=5, user_attrs={"failure_reason": "nan"}))  # 7: a real failure
    rejected = {"constraints:params_unique <= 1M": 2e5}
    add(_trial(TrialState.PRUNED, seconds=1, user_attrs={"prefiltered": True}, system_attrs=rejected))  # 8: by a cap
    add(_trial(TrialState.RUNNING))  # 9
    return study


def test_progress_counts_front_hypervolume_and_eta(busy_study: optuna.Study) -> None:
    p = study_progress(busy_study, n_trials=10, reference=[10.0, 0.0], workers=2)
    counts = (p.complete, p.pruned, p.failed, p.running, p.waiting, p.rejected)
    assert counts == (4, 1, 1, 1, 1, 1)  # a retried failure and a rejected one are not failures
    assert p.done == 6
    assert sorted(t.number for t in p.front) == [0, 1]  # feasible and not dominated
    # Losses (2, -5) and (5, -8) against (10, 0): 8*5 + 5*8 - 5*5 (the overlap counted twice).
    assert p.hypervolume == pytest.approx(55.0)
    # Mean finished duration (60+120+90+30+30)/5 = 66 s, times ceil(4 remaining / 2 workers) rounds.
    assert p.eta_seconds == pytest.approx(132.0)
    line = describe_progress(p)
    assert line == "4 done · 1 running · 1 failed · 1 stopped early · 1 rejected by caps · front 2 · HV 55 · ETA 2m12s"
    assert study_progress(busy_study, 10, None, workers=4).eta_seconds == pytest.approx(66.0)


def test_progress_line_without_reference_eta_or_remaining_trials(busy_study: optuna.Study) -> None:
    p = study_progress(busy_study, n_trials=6, reference=None)
    assert p.hypervolume is None and p.eta_seconds == 0.0  # nothing left to run
    assert describe_progress(p) == "4 done · 1 running · 1 failed · 1 stopped early · 1 rejected by caps · front 2"
    empty = study_progress(optuna.create_study(directions=["minimize", "maximize"]), 5, [10.0, 0.0])
    assert empty.eta_seconds is None and empty.hypervolume == 0.0 and not empty.front
    assert describe_progress(empty) == "0 done · 0 running · 0 failed · front 0 · HV 0"
    long = describe_progress(_progress(complete=1, front=[], hypervolume=0.25, eta_seconds=2 * 3600 + 61))
    assert long == "1 done · 0 running · 0 failed · front 0 · HV 0.25 · ETA 2h01m"


def test_hypervolume_ignores_points_outside_the_reference() -> None:
    directions = ["minimize", "minimize", "maximize"]
    reference = [5.6, 64.0, 1.0]
    assert hypervolume([[6.0, 1.0, 10.0]], directions, reference) == 0.0
    volume = hypervolume([[4.6, 32.0, 3.0], [7.0, 1.0, 100.0]], directions, reference)
    assert volume == pytest.approx(1.0 * 32.0 * 2.0)
    assert not math.isnan(hypervolume([], directions, reference))


class _ScriptedWorker:
    """A worker process whose ``poll`` plays the next step of a script against the study."""

    def __init__(self, steps) -> None:
        self.steps = list(steps)

    def poll(self) -> int | None:
        return self.steps.pop(0)()


def test_follow_prints_one_line_per_change_until_the_workers_exit(tmp_path: Path) -> None:
    space = load_search_space(tiny_space_file(tmp_path, n_trials=3))
    assert reference_point(space) == [5.6, 64 * 2**20, 1.0]
    study = optuna.create_study(directions=space.directions)
    running: list[optuna.Trial] = []

    def start():
        running.append(study.ask({"x": X["x"]}))
        return None

    def interrupt():
        raise KeyboardInterrupt  # the first Ctrl-C: keep following while the workers stop

    def finish():
        study.tell(running[0], [4.0, 2**20, 50.0])
        study.add_trial(_trial(TrialState.COMPLETE, [3.0, 2**22, 20.0], seconds=10))
        study.add_trial(_trial(TrialState.FAIL, seconds=1))
        return 0

    steps = [start, lambda: None, interrupt, lambda: None, finish]
    out = io.StringIO()
    procs = [(_ScriptedWorker(steps), None)]
    progress = launch_module._follow(study, space, procs, 1, Console(file=out, width=300), refresh_seconds=0)
    assert (progress.complete, progress.failed, progress.running, len(progress.front)) == (2, 1, 0, 2)
    lines = [line for line in out.getvalue().splitlines() if " · " in line and "━" not in line]
    # The unchanged second poll prints nothing; the Ctrl-C marks the line; the end gives the totals.
    assert lines[0] == "0/3 · 0 done · 1 running · 0 failed · front 0 · HV 0"
    assert lines[1] == "0/3 · 0 done · 1 running · 0 failed · front 0 · HV 0 · stopping"
    assert lines[2].startswith("3/3 · 2 done · 0 running · 1 failed · front 2 · HV ") and lines[2].endswith("stopping")
    assert len(lines) == 3
    assert progress.hypervolume == pytest.approx(
        hypervolume([t.values for t in progress.front], space.directions, reference_point(space))
    )
