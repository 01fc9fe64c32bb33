"""Device sharing between workers: a measurement has its device alone, work never starves it."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from optuna.trial import TrialState

from morsearch.config import DeploymentTarget
from morsearch.measure import measure
from morsearch.search.device_locks import LOCK_DIR_ENV, DeviceLock, host_work
from morsearch.search.device_share import SharedDeviceCallback, device_key
from morsearch.search.objective import SearchObjective
from morsearch.search.worker import Worker
from morsearch.train import run_proxy
from tests.train_tests.helpers import DATA, steps_budget, tiny_mor

WAIT = 0.3  # long enough for a lock that should block to show it does not


def start(action) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    thread = threading.Thread(target=lambda: (action(), done.set()), daemon=True)
    thread.start()
    return thread, done


def busy_taken(folder: Path, key: str) -> bool:
    """Whether some holder keeps another process from taking the busy lock exclusively."""
    with open(folder / f"{key}.busy.lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_a_measurement_blocks_new_batches(tmp_path: Path) -> None:
    measurement, work = DeviceLock("dev", tmp_path), DeviceLock("dev", tmp_path)
    with measurement.exclusive():
        thread, began = start(work.begin_work)
        assert not began.wait(WAIT)
    assert began.wait(5)
    work.end_work()
    thread.join()


def test_a_measurement_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    measurement, work = DeviceLock("dev", tmp_path), DeviceLock("dev", tmp_path)
    work.begin_work()
    inside = threading.Event()

    def measure_once() -> None:
        with measurement.exclusive():
            inside.set()

    thread, _ = start(measure_once)
    assert not inside.wait(WAIT)
    work.end_work()
    assert inside.wait(5)
    thread.join()


def test_overlapping_batches_do_not_starve_a_measurement(tmp_path: Path) -> None:
    # Four workers whose batches overlap, so that the device is never free of work: a lone
    # shared/exclusive lock would let them pass a waiting measurement forever.
    stop, running = threading.Event(), []
    counter_lock = threading.Lock()

    def worker(offset: float) -> None:
        lock = DeviceLock("dev", tmp_path)
        time.sleep(offset)
        while not stop.is_set():
            lock.begin_work()
            with counter_lock:
                running.append(1)
            time.sleep(0.02)
            with counter_lock:
                running.pop()
            lock.end_work()

    threads = [threading.Thread(target=worker, args=(i * 0.005,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    measured = threading.Event()
    during: list[int] = []

    def measure_once() -> None:
        with DeviceLock("dev", tmp_path).exclusive():
            during.append(len(running))
            time.sleep(0.05)
            during.append(len(running))
            measured.set()

    start(measure_once)
    assert measured.wait(5)
    stop.set()
    for thread in threads:
        thread.join()
    assert during == [0, 0]  # no batch ran while the measurement held the device


def test_devices_do_not_block_each_other(tmp_path: Path) -> None:
    with DeviceLock("cuda-a", tmp_path).exclusive():
        work = DeviceLock("cuda-b", tmp_path)
        _, began = start(work.begin_work)
        assert began.wait(5)
        work.end_work()


def _hold_exclusive(folder: str, held) -> None:
    with DeviceLock("dev", Path(folder)).exclusive():
        held.set()
        time.sleep(600)


def test_a_killed_measurement_frees_its_device(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    held = context.Event()
    holder = context.Process(target=_hold_exclusive, args=(str(tmp_path), held))
    holder.start()
    assert held.wait(30)
    work = DeviceLock("dev", tmp_path)
    thread, began = start(work.begin_work)
    assert not began.wait(WAIT)
    os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a dead process's flocks
    holder.join()
    assert began.wait(5)
    work.end_work()
    thread.join()


def test_every_training_batch_holds_its_device(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path))
    seen: list[bool] = []

    class Probe(pl.Callback):  # runs after SharedDeviceCallback's hooks at batch start
        def on_train_batch_start(self, *_args) -> None:
            seen.append(busy_taken(tmp_path, "cpu"))

    run_proxy(tiny_mor(), steps_budget(6), DATA, device="cpu", callbacks=[SharedDeviceCallback("cpu"), Probe()])
    assert seen == [True] * 6
    assert not busy_taken(tmp_path, "cpu")  # nothing left held after the run


@pytest.mark.parametrize("from_start", [False, True])
def test_a_run_s_set_up_holds_its_device_only_when_asked(tmp_path: Path, monkeypatch, from_start: bool) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path))
    seen: list[bool] = []

    class Probe(pl.Callback):  # the trainer's set-up is over, no batch has run yet
        def on_fit_start(self, *_args) -> None:
            seen.append(busy_taken(tmp_path, "cpu"))

    sharing = SharedDeviceCallback("cpu", from_start=from_start)
    assert busy_taken(tmp_path, "cpu") == from_start  # before the data and the model are built
    run_proxy(tiny_mor(), steps_budget(2), DATA, device="cpu", callbacks=[sharing, Probe()])
    assert seen == [from_start]
    assert not busy_taken(tmp_path, "cpu")


def test_a_set_up_that_fails_before_any_batch_frees_the_device(one_trial_search) -> None:
    space, rdb, engine, study = one_trial_search
    lock_folder = Path(os.environ[LOCK_DIR_ENV])

    def fail_while_building(*_args, **_kwargs):
        assert busy_taken(lock_folder, "cpu")  # the set-up holds the device
        raise RuntimeError("the model did not build")

    Worker(study, rdb, engine, SearchObjective(space, study, engine, train=fail_while_building), 1).run()
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL and "did not build" in trial.user_attrs["failure_detail"]
    assert not busy_taken(lock_folder, "cpu")


def test_host_work_keeps_a_measurement_of_its_device_waiting(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path))
    measurement = DeviceLock("cpu", tmp_path)

    def measure_once() -> None:
        with measurement.exclusive():
            pass

    with host_work():
        thread, measured = start(measure_once)
        assert not measured.wait(WAIT)
    assert measured.wait(5)
    thread.join()
    measurement.close()


@pytest.fixture
def one_trial_search(tmp_path: Path, monkeypatch):
    """(space, storage, engine, study) of a one-trial tiny search, its device locks in ``tmp_path``."""
    from morsearch import store
    from morsearch.search.samplers import make_sampler
    from morsearch.search.space import load_search_space
    from morsearch.search.study import create_study, open_storage
    from tests.search_tests.test_objective import tiny_space_file

    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path))
    space = load_search_space(tiny_space_file(tmp_path, n_trials=1))
    rdb, engine = open_storage(f"sqlite:///{tmp_path / 'tiny.db'}")
    study, _ = create_study(rdb, engine, "tiny", space.directions, space.objective_names, make_sampler(space))
    yield space, rdb, engine, study
    rdb.engine.dispose()
    store.dispose_engines()


def test_the_objective_measures_with_the_device_to_itself(one_trial_search) -> None:
    space, rdb, engine, study = one_trial_search
    probes: list[tuple[DeviceLock, threading.Thread, threading.Event, bool]] = []

    def measure_and_probe(model, target: DeploymentTarget):
        work = DeviceLock(device_key(None if target.device == "auto" else target.device))
        thread, began = start(work.begin_work)  # another worker's next batch
        probes.append((work, thread, began, began.wait(WAIT)))
        return measure(model, target)

    Worker(study, rdb, engine, SearchObjective(space, study, engine, measure=measure_and_probe), 1).run()
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure_detail")
    ((work, thread, began, began_while_measuring),) = probes
    assert not began_while_measuring
    assert began.wait(5)  # and it went on once the measurement was done
    work.end_work()
    thread.join()


@pytest.mark.parametrize("device", ["cpu", None, "auto"])
def test_device_keys_name_the_hardware(device) -> None:
    assert device_key(device) == "cpu"  # this test machine has no GPU; a GPU's key is its UUID


def test_a_lock_counts_the_time_it_waited_for_another_holder(tmp_path: Path) -> None:
    measurement, work = DeviceLock("dev", tmp_path), DeviceLock("dev", tmp_path)
    with measurement.exclusive():
        thread, began = start(work.begin_work)
        time.sleep(WAIT)
    assert began.wait(5)
    work.end_work()
    thread.join()
    assert WAIT <= work.waited_seconds < WAIT + 2
    assert measurement.waited_seconds < WAIT  # it found the device free

    def measure_once() -> None:
        with measurement.exclusive():
            pass

    work.begin_work()  # a batch in flight: the next measurement waits for its end
    thread, measured = start(measure_once)
    time.sleep(WAIT)
    work.end_work()
    assert measured.wait(5)
    thread.join()
    assert WAIT <= measurement.waited_seconds < WAIT + 2


def test_a_trial_s_device_seconds_leave_out_its_waits_for_a_measurement(one_trial_search) -> None:
    from morsearch import store

    space, rdb, engine, study = one_trial_search
    other_worker = DeviceLock("cpu")
    measuring = threading.Event()

    def measure_for_a_while() -> None:
        with other_worker.exclusive():
            measuring.set()
            time.sleep(6 * WAIT)  # past the worker's ask and suggest, so that its set-up waits

    objective = SearchObjective(space, study, engine)
    start(measure_for_a_while)
    assert measuring.wait(5)
    Worker(study, rdb, engine, objective, 1).run()  # the trial's set-up waits for that measurement
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure_detail")
    (record,) = store.read_trials(engine, "tiny")
    waited = record.phase_seconds["device_wait"]
    assert WAIT <= waited < record.phase_seconds["trial"]
    assert record.device_seconds == pytest.approx(record.phase_seconds["trial"] - waited)
    assert trial.user_attrs["gpu_seconds"] == pytest.approx(record.device_seconds)
    other_worker.close()
