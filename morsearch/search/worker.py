"""The worker: an ask/tell loop that shares nothing with other workers but the storage.

::

    loop:  sweep stale trials ─▶ claim (lock: count, ask, first heartbeat) ─▶ objective ─▶ tell + record
             ▲                        │ none left but others still running
             └──── poll ◀─────────────┘ (their trial may die and come back as a retry)

* Exact total: a trial is claimed under a cross-process lock that counts the study's
  trials (a retry replaces the trial it retries, so it is not counted twice) and
  asks only while the count is below ``n_trials`` or a retry waits (enqueued trials count once started).
* Crashes: a heartbeat thread beats while the objective runs; every worker sweeps
  RUNNING trials whose heartbeat is older than the grace period (Optuna runs its
  heartbeat only inside ``optimize``), fails them and re-enqueues their parameters.
* Failures: an exception fails the trial with a reason (``oom`` with the memory it
  asked for, ``nan``, ``config``, ``error``) and the worker goes on.
* Ctrl-C / SIGTERM: the first asks the running trial to stop at its next evaluation;
  the trial is failed as ``interrupted`` and re-enqueued, so a restart continues it.
  A second one interrupts at once, but never between Optuna's ``tell`` and the
  record write (the record is one transaction and is written after ``tell``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from morsearch import store
from morsearch.errors import ConfigError, MorsearchError, StorageError, TrainingError
from morsearch.search.study import GRACE_S, HEARTBEAT_S, load_study, open_storage

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

RETRY_ATTR = "failed_trial"  # system attr Optuna's retry callback puts on a retried copy
PREFILTERED_ATTR = "prefiltered"  # user attr of configurations rejected before training


class TrialInterrupted(Exception):  # noqa: N818 (a signal, not an error)
    """The objective stopped its trial because the worker was asked to stop."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an objective returns: Optuna's verdict and morsearch's record of the trial.

    Attributes:
        state: COMPLETE (with ``values``), PRUNED (stopped early, or rejected by a cap) or FAIL.
        values: Objective values in the study's order (COMPLETE only).
        record: The rich record written to the store after ``tell``; ``None`` writes none.
        attrs: User attributes set on the trial before ``tell``.
    """

    state: TrialState
    values: tuple[float, ...] | None = None
    record: store.TrialRecord | None = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


Objective = Callable[[optuna.Trial], "Outcome | Sequence[float]"]


@dataclasses.dataclass
class WorkerSummary:
    """What one worker did."""

    completed: int = 0
    pruned: int = 0
    failed: int = 0
    rejected: int = 0  # broke a cap before training (told as PRUNED, never trained)
    interrupted: int = 0
    trial_numbers: list[int] = dataclasses.field(default_factory=list)


class GracefulStop:
    """Turns the first SIGINT/SIGTERM into a stop request and a second into an interrupt.

    ``event`` is set on the first signal; objectives poll it (e.g. at each evaluation).
    The second signal raises ``KeyboardInterrupt``, deferred while inside ``critical()``.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._critical = 0
        self._pending = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this (main) thread."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        if not self.event.is_set():
            self.event.set()
            return
        if self._critical:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a second Ctrl-C must not cut in half."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._pending:
                self._pending = False
                raise KeyboardInterrupt


def classify_failure(exc: BaseException) -> tuple[str, str, int | None]:
    """``(reason, detail, requested_memory_bytes)`` of an exception that failed a trial."""
    detail = f"{type(exc).__name__}: {exc}".strip()
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return "oom", detail[:2000], _requested_bytes(text)
    if isinstance(exc, TrainingError):
        return getattr(exc, "reason", None) or ("nan" if "nan" in text.lower() else "training"), detail, None
    if isinstance(exc, ConfigError):
        return "config", detail, None
    if isinstance(exc, MorsearchError):
        return type(exc).__name__.removesuffix("Error").lower(), detail, None
    return "error", "".join(traceback.format_exception(exc))[-4000:], None


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _requested_bytes(message: str) -> int | None:
    # PyTorch: "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; ...)"
    match = re.search(r"Tried to allocate ([\d.]+) ?(B|KiB|MiB|GiB|TiB)", message)
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The ask/tell loop drives the heartbeat itself, as Optuna advises outside optimize();
    # its "experimental" and "use with optimize" warnings would repeat on every trial.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        yield


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counted_trials(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that count toward ``n_trials``: retries replace their original; rejected ones are free."""
    return sum(1 for t in trials if RETRY_ATTR not in t.system_attrs and not t.user_attrs.get(PREFILTERED_ATTR))


class _Heartbeat:
    """Beats for one trial in a thread, so a dead worker's trial goes stale."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 10
        while not self._stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is harmless; the next one retries
                self._storage.record_heartbeat(self._trial_id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Runs trials of one study until ``n_trials`` are done across all workers.

    Args:
        study: The study, loaded from an ``RDBStorage`` with the heartbeat on
            (``morsearch.search.study.open_storage``).
        storage: That storage.
        engine: morsearch's engine on the same database (records and the claim lock).
        objective: ``trial -> Outcome`` (or plain objective values).
        n_trials: Total trials of the study, all workers together.
        stop: A stop request (set by ``GracefulStop`` or a caller).
        poll_seconds: Wait between checks while other workers finish their trials.
        max_prefiltered: Stop with an error after this many configurations were
            rejected before training (the space's caps exclude nearly all of it).
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        engine: Engine,
        objective: Objective,
        n_trials: int,
        *,
        stop: GracefulStop | None = None,
        poll_seconds: float = 1.0,
        max_prefiltered: int | None = None,
    ) -> None:
        self.study, self.storage, self.engine = study, storage, engine
        self.objective = objective
        self.n_trials = n_trials
        self.stop = stop or GracefulStop()
        self.poll_seconds = poll_seconds
        self.max_prefiltered = max_prefiltered if max_prefiltered is not None else max(100, 10 * n_trials)
        self.summary = WorkerSummary()
        with _quiet():
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)

    def run(self) -> WorkerSummary:
        """Run trials until the study has ``n_trials``, a stop is requested, or nothing is left."""
        next_sweep = 0.0
        while not self.stop.event.is_set():
            if time.monotonic() >= next_sweep:  # a stale trial is found within a heartbeat anyway
                with _quiet():
                    optuna.storages.fail_stale_trials(self.study)
                next_sweep = time.monotonic() + (self.storage.get_heartbeat_interval() or 10)
            claim = self._claim()
            if claim is None:
                return self.summary
            if claim == "wait":
                self.stop.event.wait(self.poll_seconds)
                continue
            self._run_trial(claim)
        return self.summary

    def _claim(self) -> optuna.Trial | str | None:
        with store.storage_lock(self.engine, f"claim:{self.study.study_name}"):
            trials = self.study.get_trials(deepcopy=False)
            prefiltered = sum(1 for t in trials if t.user_attrs.get(PREFILTERED_ATTR))
            if prefiltered > self.max_prefiltered:
                raise ConfigError(
                    f"study {self.study.study_name!r}: {prefiltered} configurations broke the space's caps "
                    "before training; loosen the caps (constraints) or narrow the ranges that exceed them"
                )
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            retry_waiting = any(RETRY_ATTR in t.system_attrs for t in waiting)
            # Enqueued trials (baselines) count once they start; a retry replaces its original.
            if retry_waiting or counted_trials(trials) - counted_trials(waiting) < self.n_trials:
                with _quiet():
                    trial = self.study.ask()
                # First beat inside the lock: a trial never exists without one, so it can go stale.
                self.storage.record_heartbeat(trial._trial_id)
                return trial
        if any(t.state == TrialState.RUNNING for t in trials):
            return "wait"
        return None

    def _run_trial(self, trial: optuna.Trial) -> None:
        self.summary.trial_numbers.append(trial.number)
        try:
            with _Heartbeat(self.storage, trial._trial_id):
                result = self.objective(trial)
        except (TrialInterrupted, KeyboardInterrupt) as exc:
            self._interrupted(trial)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
        except StorageError:
            raise  # the store is gone: this trial goes stale and is retried elsewhere
        except Exception as exc:  # any trial failure: record it, go on with the next trial
            reason, detail, requested = classify_failure(exc)
            attrs = {"failure_reason": reason, "failure_detail": detail[-1000:]}
            if requested is not None:
                attrs["requested_memory_bytes"] = requested
            result = Outcome(TrialState.FAIL, attrs=attrs)
        self._finish(trial, result if isinstance(result, Outcome) else Outcome(TrialState.COMPLETE, tuple(result)))

    def _finish(self, trial: optuna.Trial, outcome: Outcome) -> None:
        with self.stop.critical():
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            if outcome.state == TrialState.COMPLETE:
                with _quiet():
                    self.study.tell(trial, list(outcome.values or ()))
                self.summary.completed += 1
            else:
                with _quiet():
                    self.study.tell(trial, state=outcome.state)
                rejected = bool(outcome.attrs.get(PREFILTERED_ATTR))
                self.summary.rejected += rejected
                self.summary.pruned += outcome.state == TrialState.PRUNED and not rejected
                self.summary.failed += outcome.state == TrialState.FAIL
            if outcome.record is not None:
                store.write_trial(self.engine, outcome.record)

    def _interrupted(self, trial: optuna.Trial) -> None:
        with self.stop.critical():
            trial.set_user_attr("failure_reason", "interrupted")
            with _quiet():
                self.study.tell(trial, state=TrialState.FAIL)
            # Same parameters back in the queue: a restart of the study runs this trial again.
            self._retry(self.study, self.study._storage.get_trial(trial._trial_id))
            self.summary.interrupted += 1


def run_worker(
    storage_url: str,
    study_name: str,
    objective: Objective,
    n_trials: int,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    stop: GracefulStop | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    poll_seconds: float = 1.0,
) -> WorkerSummary:
    """Join ``study_name`` in ``storage_url`` and run trials until it has ``n_trials``.

    Raises:
        StorageError: The storage or the study cannot be opened.
    """
    storage, engine = open_storage(
        storage_url, heartbeat_interval=heartbeat_interval or HEARTBEAT_S, grace_period=grace_period or GRACE_S
    )
    study = load_study(storage, study_name, sampler)
    worker = Worker(study, storage, engine, objective, n_trials, stop=stop, poll_seconds=poll_seconds)
    return worker.run()
