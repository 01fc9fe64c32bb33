"""Start a search: create the study once, start N worker processes, show live progress.

``morsearch search SPACE.yaml --workers N`` runs ``launch``; each worker process
runs ``morsearch worker --storage URL --study NAME``, which is also how a worker
on another machine joins (docs/SCALING.md). Workers read the space from the store
(``ms_studies``), so a joining worker needs nothing but the URL and the name.

Ctrl-C reaches every worker (one process group): each stops its training at the
next evaluation, re-enqueues the trial and exits; a second Ctrl-C stops at once.
Running the same command again continues the study.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from morsearch import store
from morsearch.config.space import SearchSpace
from morsearch.errors import MorsearchError, StorageError
from morsearch.search.distributions import enqueue_baselines
from morsearch.search.samplers import make_sampler
from morsearch.search.space import load_search_space
from morsearch.search.study import GRACE_S, HEARTBEAT_S, create_study, load_study, open_storage
from morsearch.search.worker import PREFILTERED_ATTR, GracefulStop, Worker, WorkerSummary

# Parts of a space that may change between runs of one study without changing what it means.
_MUTABLE_SPACE_KEYS = ("n_trials", "description", "storage")


def prepare_study(space: SearchSpace, storage: str | None = None, space_path: str | Path | None = None) -> str:
    """Create the study of ``space`` (or check the existing one) and enqueue the baselines.

    Args:
        space: The search space.
        storage: Storage URL or ``.db`` path overriding ``space.storage``.
        space_path: The YAML file, recorded with the study.

    Returns:
        The resolved storage URL, for the workers.

    Raises:
        StorageError: The study exists with a different space (other than ``n_trials``).
    """
    url = store.resolve_url(storage or space.storage, space.study_name)
    rdb, engine = open_storage(url)
    try:
        study, created = create_study(rdb, engine, space.study_name, space.directions, space.objective_names)
        dump = space.model_dump(mode="json")
        store.write_study(
            engine,
            store.StudyRecord(
                study_name=space.study_name,
                space=dump,
                objectives=[{"name": o.metric, "direction": o.direction} for o in space.objectives],
                n_trials=space.n_trials,
                reference_point=reference_point(space),
                space_path=str(space_path) if space_path else None,
            ),
        )
        existing = store.read_study(engine, space.study_name)
        assert existing is not None
        changed = sorted(k for k in dump if k not in _MUTABLE_SPACE_KEYS and dump[k] != existing.space.get(k))
        if changed:
            raise StorageError(
                f"study {space.study_name!r} in {store.redact(url)} was started with a different space "
                f"({', '.join(changed)} changed); give the new space its own study_name, or delete the study"
            )
        if existing.n_trials != space.n_trials:
            store.set_n_trials(engine, space.study_name, space.n_trials)
        if created:
            enqueue_baselines(study, space)
    finally:
        rdb.engine.dispose()
    return url


def reference_point(space: SearchSpace) -> list[float] | None:
    """The space's hypervolume reference point in objective order, or None."""
    if space.reference_point is None:
        return None
    return [float(space.reference_point[o.metric]) for o in space.objectives]


def load_space(engine: object, study_name: str) -> tuple[SearchSpace, int]:
    """The space and total trial count a study was started with.

    Raises:
        StorageError: The study was not started by ``morsearch search``.
    """
    record = store.read_study(engine, study_name)  # type: ignore[arg-type]
    if record is None:
        raise StorageError(
            f"study {study_name!r} has no morsearch search space in this storage; "
            "start it with `morsearch search SPACE.yaml --storage URL` first"
        )
    return SearchSpace.model_validate(record.space), record.n_trials


def run_study_worker(
    storage_url: str,
    study_name: str,
    *,
    worker_index: int = 0,
    device: str | None = None,
    early_stopping: bool | None = None,
    install_signals: bool = True,
    heartbeat_interval: int = HEARTBEAT_S,
    grace_period: int = GRACE_S,
) -> WorkerSummary:
    """One worker process of a study: read its space from the store and run trials.

    Args:
        storage_url: The study's storage.
        study_name: The study.
        worker_index: Distinct per worker; offsets the sampler's seed.
        device: Training device (None: the GPU when there is one).
        early_stopping: Override the space's early-stopping switch.
        install_signals: Turn Ctrl-C/SIGTERM into a graceful stop (main thread only).
        heartbeat_interval: Seconds between the heartbeats of this worker's running trial.
        grace_period: Seconds without a heartbeat after which this worker fails and retries
            another worker's trial; must exceed every worker's ``heartbeat_interval``.

    Raises:
        MorsearchError: ``grace_period`` is not longer than ``heartbeat_interval``.
    """
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise MorsearchError(
            f"--heartbeat {heartbeat_interval} --grace {grace_period}: give a heartbeat of at least 1 s and a "
            "grace period longer than every worker's heartbeat, or a live trial is taken for a dead one"
        )
    url = store.resolve_url(storage_url, study_name)
    rdb, engine = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    space, n_trials = load_space(engine, study_name)
    study = load_study(rdb, study_name, make_sampler(space, worker_index))
    stop = GracefulStop()
    if install_signals:
        stop.install()
    from morsearch.search.objective import SearchObjective  # torch and Lightning load here, not on import

    objective = SearchObjective(space, study, engine, stop=stop, device=device, early_stopping=early_stopping)
    return Worker(study, rdb, engine, objective, n_trials, stop=stop).run()


# --- progress ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StudyProgress:
    """Where a study stands (what ``morsearch search`` and ``morsearch status`` show)."""

    study_name: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    rejected: int
    front: list[optuna.trial.FrozenTrial]
    hypervolume: float | None
    eta_seconds: float | None

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Optuna's rule: every constraint value is zero or less."""
    return all(v <= 0 for k, v in trial.system_attrs.items() if k.startswith("constraints:"))


def pareto_front(
    trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]
) -> list[optuna.trial.FrozenTrial]:
    """Completed feasible trials no other one dominates."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)]
    losses = [_losses(t.values, directions) for t in done]
    front = []
    for i, a in enumerate(losses):
        dominated = any(np.all(b <= a) and np.any(b < a) for j, b in enumerate(losses) if j != i)
        if not dominated:
            front.append(done[i])
    return front


def _losses(values: Sequence[float], directions: Sequence[str]) -> np.ndarray:
    return np.array([v if d == "minimize" else -v for v, d in zip(values, directions, strict=True)], dtype=float)


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` up to ``reference`` (0 if none is better than it everywhere)."""
    from optuna._hypervolume import compute_hypervolume

    ref = _losses(reference, directions)
    inside = [p for p in (_losses(v, directions) for v in points) if np.all(p < ref)]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.array(inside), ref, assume_pareto=False))


def study_progress(
    study: optuna.Study, n_trials: int, reference: Sequence[float] | None, workers: int = 1
) -> StudyProgress:
    """Counts, Pareto front, hypervolume and an ETA from the trials so far."""
    trials = study.get_trials(deepcopy=False)
    directions = [d.name.lower() for d in study.directions]
    rejected = {t.number for t in trials if t.user_attrs.get(PREFILTERED_ATTR)}
    # A failed original that was retried is not a failure of the study: its retry carries on.
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    by_state = {s: sum(1 for t in trials if t.state == s and t.number not in rejected) for s in TrialState}
    failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried | rejected)
    front = pareto_front(trials, directions)
    volume = hypervolume([t.values for t in front], directions, reference) if reference else None
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.number not in rejected
        and t.datetime_start
        and t.datetime_complete
    ]
    done = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED] + failed
    remaining = max(n_trials - done, 0)
    eta = float(np.mean(durations)) * math.ceil(remaining / max(workers, 1)) if durations and remaining else None
    return StudyProgress(
        study_name=study.study_name,
        n_trials=n_trials,
        complete=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=failed,
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
        rejected=len(rejected),
        front=front,
        hypervolume=volume,
        eta_seconds=0.0 if not remaining else eta,
    )


def describe_progress(p: StudyProgress) -> str:
    """One line: done/running/failed, front size, hypervolume, ETA."""
    parts = [f"{p.complete} done", f"{p.running} running", f"{p.failed} failed"]
    if p.pruned:
        parts.append(f"{p.pruned} stopped early")
    if p.rejected:
        parts.append(f"{p.rejected} rejected by caps")
    parts.append(f"front {len(p.front)}")
    if p.hypervolume is not None:
        parts.append(f"HV {p.hypervolume:.4g}")
    if p.eta_seconds:
        parts.append(f"ETA {_duration(p.eta_seconds)}")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# --- launching ---------------------------------------------------------------------------------


def worker_command(storage_url: str, study_name: str, index: int) -> list[str]:
    """The command line of one local worker process."""
    return [
        sys.executable,
        "-m",
        "morsearch",
        "worker",
        "--storage",
        storage_url,
        "--study",
        study_name,
        "--index",
        str(index),
    ]


def worker_env(
    index: int, workers: int, gpus: Sequence[int] | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of local worker ``index`` of ``workers``.

    With ``gpus``, worker ``i`` sees only ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``; its
    ``cuda`` is that GPU), so several workers share one GPU when there are more workers than GPUs.
    Workers split the CPU cores (``OMP_NUM_THREADS``) unless the caller set a thread count:
    GPU workers too, whose host-side work (data, decode dispatch) slows down when every
    worker's thread pool spins on every core.
    """
    env = dict(os.environ if base is None else base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(workers, 1)))
    return env


def launch(
    space_path: str | Path,
    *,
    workers: int = 1,
    gpus: Sequence[int] | None = None,
    storage: str | None = None,
    console: Console | None = None,
    refresh_seconds: float = 1.0,
) -> StudyProgress:
    """Run a whole search on this machine: ``workers`` processes, live progress until done.

    Args:
        space_path: The search-space YAML.
        workers: Worker processes (several per GPU are allowed); 0 only creates the study.
        gpus: GPU indices; worker ``i`` gets ``gpus[i % len(gpus)]``. None: the default device.
        storage: Storage URL overriding the space's.
        console: Where progress goes.
        refresh_seconds: Seconds between progress updates.

    Returns:
        The final progress of the study.

    Raises:
        MorsearchError: A worker exited with an error (its log is named).
    """
    if workers < 0:
        raise MorsearchError(f"--workers {workers}: give 0 (only create the study) or more")
    console = console or Console()
    space = load_search_space(space_path)
    url = prepare_study(space, storage, space_path)
    logs = _log_dir(url, space.study_name)
    console.print(
        f"study [bold]{space.study_name}[/] · {space.n_trials} trials · {workers} worker(s) · store {store.redact(url)}"
    )
    if workers == 0:  # create the study for workers started elsewhere (docs/SCALING.md)
        console.print(f"study ready; join it with: morsearch worker --storage URL --study {space.study_name}")
        rdb, _ = open_storage(url)
        try:
            return study_progress(load_study(rdb, space.study_name), space.n_trials, reference_point(space))
        finally:
            rdb.engine.dispose()
    console.print(f"worker logs: {logs}")
    procs = []
    for index in range(workers):
        env = worker_env(index, workers, gpus)
        log = open(logs / f"worker-{index}.log", "a")  # noqa: SIM115 (closed after the process ends)
        procs.append(
            (
                subprocess.Popen(
                    worker_command(url, space.study_name, index), env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    rdb, _ = open_storage(url)
    study = load_study(rdb, space.study_name)
    try:
        progress = _follow(study, space, procs, workers, console, refresh_seconds)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            log.close()
        rdb.engine.dispose()
    bad = [(i, proc.returncode) for i, (proc, _) in enumerate(procs) if proc.returncode not in (0,)]
    if bad:
        names = ", ".join(f"worker {i} (exit {code}): {logs / f'worker-{i}.log'}" for i, code in bad)
        raise MorsearchError(
            f"{len(bad)} worker(s) failed: {names}; see the log, fix, and run the command again to continue"
        )
    return progress


def _log_dir(url: str, study_name: str) -> Path:
    path = store.engine.sqlite_path(url)
    folder = (path.parent if path is not None else store.engine.DEFAULT_ROOT) / f"{study_name}-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _follow(
    study: optuna.Study,
    space: SearchSpace,
    procs: list[tuple[subprocess.Popen, object]],
    workers: int,
    console: Console,
    refresh_seconds: float,
) -> StudyProgress:
    reference = reference_point(space)
    columns = (BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[line]}"))
    stopping = False
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("trials", total=space.n_trials, line="starting workers")
        shown = ""
        while True:
            try:
                alive = [p for p, _ in procs if p.poll() is None]
                progress = study_progress(study, space.n_trials, reference, workers=max(len(alive), 1))
                line = describe_progress(progress) + (" · stopping" if stopping else "")
                bar.update(task, completed=progress.done, total=space.n_trials, line=line)
                if not console.is_terminal and line != shown:  # logs and CI: one line per change
                    console.print(f"{progress.done}/{space.n_trials} · {line}", highlight=False)
                    shown = line
                if not alive:
                    return progress
                time.sleep(refresh_seconds)
            except KeyboardInterrupt:
                # The workers got the same Ctrl-C (same process group) and stop after their trial.
                if stopping:
                    raise
                stopping = True


# --- status ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    """One study as ``morsearch status`` prints it."""

    study_name: str
    storage: str
    progress: StudyProgress
    best: list[tuple[str, str, float, int]]  # (objective, direction, best value, trial number)

    @property
    def line(self) -> str:
        return f"{self.progress.done}/{self.progress.n_trials} finished · " + describe_progress(self.progress)

    @property
    def front_size(self) -> int:
        return len(self.progress.front)


def status_of(storage: str | None, study_name: str | None) -> list[StudyStatus]:
    """Status of one study, of every study in a storage, or of every store under ``trials/``.

    Raises:
        StorageError: The store or the study does not exist.
    """
    if storage is None and study_name is None:
        urls = [f"sqlite:///{p.resolve()}" for p in sorted(store.engine.DEFAULT_ROOT.glob("*.db"))]
        if not urls:
            raise StorageError(
                f"no stores in {store.engine.DEFAULT_ROOT}/; pass --storage URL or run `morsearch search` first"
            )
    else:
        urls = [store.resolve_url(storage, study_name or "study")]
    reports = []
    for url in urls:
        path = store.engine.sqlite_path(url)
        if path is not None and not path.is_file():
            raise StorageError(f"no store at {path}; pass --storage URL or run `morsearch search` first")
        rdb, engine = open_storage(url)
        try:
            names = [study_name] if study_name else sorted(s.study_name for s in rdb.get_all_studies())
            for name in names:
                reports.append(_status(rdb, engine, url, name))
        finally:
            rdb.engine.dispose()
    return reports


def _status(rdb: optuna.storages.RDBStorage, engine: object, url: str, name: str) -> StudyStatus:
    study = load_study(rdb, name)
    record = store.read_study(engine, name)  # type: ignore[arg-type]
    n_trials = record.n_trials if record else len(study.trials)
    progress = study_progress(study, n_trials, record.reference_point if record else None)
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    best = []
    for i, (metric, direction) in enumerate(zip(names, study.directions, strict=True)):
        pick = min if direction == optuna.study.StudyDirection.MINIMIZE else max
        if progress.front:
            winner = pick(progress.front, key=lambda t, i=i: t.values[i])
            best.append((metric, direction.name.lower(), winner.values[i], winner.number))
    return StudyStatus(study_name=name, storage=store.redact(url), progress=progress, best=best)
