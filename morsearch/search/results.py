"""Read-only view of finished and running studies, for the dashboard and the export.

Opens a study store (any SQLAlchemy URL Optuna accepts) without ever writing to it:
SQLite is opened with ``mode=ro``, PostgreSQL with ``default_transaction_read_only``.
Each Optuna trial becomes a ``TrialRecord`` that joins its params, values, state and
user attributes with the rich records the search keeps beside it (learning curve,
routing depths, phase timings, measurement, failure reason).

Imports no torch or lightning and never imports ``search.objective``/``search.worker``,
so the dashboard runs on a machine with only the core read dependencies.

Reading is incremental: Optuna's cached storage re-reads only unfinished and new
trials (reading a whole study on every refresh is slow past thousands of trials,
optuna#4449), and a finished trial is converted to a ``TrialRecord`` once.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy

from morsearch import store
from morsearch.errors import StorageError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    from sqlalchemy.engine import Engine

__all__ = [
    "StudyView",
    "TrialRecord",
    "list_studies",
    "open_study",
    "pareto_mask",
]

# User-attribute keys the search writes on each trial (the objective's contract with
# this view). The store's ms_ records, when present, take precedence.
ATTR_MODEL_CONFIG = "model_config"
ATTR_CURVE = "curve"
ATTR_ROUTING = "routing"
ATTR_PHASE_SECONDS = "phase_seconds"
ATTR_MEASUREMENT = "measurement"
ATTR_FAILURE = "failure_reason"
ATTR_BASELINE = "baseline"
ATTR_GPU_SECONDS = "gpu_seconds"
STUDY_ATTR_REFERENCE_POINT = "reference_point"
STUDY_ATTR_OBJECTIVE_NAMES = "objective_names"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the dashboard sees it: Optuna's facts joined with the store's records."""

    number: int
    state: str
    """Optuna state name: COMPLETE, FAIL, PRUNED, RUNNING or WAITING."""
    values: tuple[float, ...] | None
    params: Mapping[str, Any]
    user_attrs: Mapping[str, Any]
    datetime_start: datetime | None
    datetime_complete: datetime | None
    model_config: Mapping[str, Any] | None = None
    """The full ``ModelConfig`` fields the trial trained (what export writes)."""
    curve: tuple[tuple[float, float], ...] = ()
    """Learning curve: (tokens seen, validation NLL) pairs."""
    routing: tuple[float, ...] = ()
    """Share of tokens reaching each recursion depth (validation)."""
    phase_seconds: Mapping[str, float] = field(default_factory=dict)
    measurement: Mapping[str, Any] = field(default_factory=dict)
    failure_reason: str | None = None
    baseline: str | None = None
    """``vanilla`` or ``recursive`` for the reference models the search trains beside MoR."""
    constraints: Mapping[str, float] = field(default_factory=dict)
    gpu_seconds: float | None = None
    """Accelerator time the trial used (its wall time when the search did not record one)."""
    failure_detail: str | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The run's other config sections from the store (``budget``, ``data``, ``target``)."""
    analytic: Mapping[str, Any] = field(default_factory=dict)
    """Analytic sizing the search recorded beside the measurement (params, FLOPs, KV bytes)."""

    @property
    def is_complete(self) -> bool:
        return self.state == "COMPLETE" and self.values is not None

    @property
    def feasible(self) -> bool:
        """Optuna's rule: every constraint value is zero or less."""
        return all(v <= 0 for v in self.constraints.values())

    @property
    def duration_s(self) -> float | None:
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return (self.datetime_complete - self.datetime_start).total_seconds()


def _read_only_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage that cannot write: checked to exist before connecting."""
    import optuna
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(
            f"'{url}' is not a storage URL; use e.g. sqlite:///trials/study.db or postgresql+psycopg://user@host/db"
        ) from None
    shown = store.redact(url)  # what the user typed, password hidden; the URL below may be rewritten
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise StorageError(f"{url}: an in-memory SQLite store holds no study; pass the study's .db file")
        path = Path(database).expanduser().resolve()
        if not path.is_file():
            raise StorageError(f"{url}: no such store file {path}; check the path or run `morsearch search` first")
        # mode=ro: a bug or a malicious page can never modify the store through this view.
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine_kwargs["connect_args"] = {"timeout": 30}  # workers may hold the write lock
    elif parsed.get_backend_name() == "postgresql":
        # every transaction read-only, server-enforced; keep options the URL already sets (search_path)
        options = " ".join(filter(None, [parsed.query.get("options"), "-c default_transaction_read_only=on"]))
        engine_kwargs["connect_args"] = {"options": options}
    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
        engine.dispose()
    except ImportError as exc:
        raise StorageError(f"{shown}: the database driver is missing ({exc}); install it") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise StorageError(f"{shown}: cannot open the store ({reason}); check the URL and the server") from None
    missing = {"studies", "trials", "version_info"} - tables
    if missing:
        raise StorageError(
            f"{shown}: not a morsearch study store (tables {', '.join(sorted(missing))} are missing); "
            "pass the store a `morsearch search` wrote to"
        )
    try:
        # skip_table_creation: never create tables; the version check only reads.
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as exc:  # optuna raises RuntimeError/SQLAlchemyError for old or odd schemas
        raise StorageError(f"{shown}: cannot read the store ({exc})") from None


def list_studies(storage_url: str) -> list[str]:
    """Names of the studies in a store, opened read-only.

    Raises:
        StorageError: the store is missing, unreachable or not a study store.
    """
    storage = _read_only_storage(storage_url)
    try:
        return sorted(study.study_name for study in storage.get_all_studies())
    finally:
        storage.engine.dispose()


def open_study(storage_url: str, study_name: str | None = None) -> StudyView:
    """Open one study of a store read-only.

    Args:
        storage_url: SQLAlchemy URL of the store (``sqlite:///trials/x.db``, ``postgresql+psycopg://...``).
        study_name: the study; may be omitted when the store holds exactly one.

    Raises:
        StorageError: the store cannot be read, or the study is not in it (the message lists those that are).
    """
    import optuna

    storage = _read_only_storage(storage_url)
    names = sorted(study.study_name for study in storage.get_all_studies())
    if study_name is None:
        if len(names) != 1:
            storage.engine.dispose()
            raise StorageError(
                f"{store.redact(storage_url)} holds {len(names)} studies; pick one with --study "
                f"({', '.join(names) or 'none yet'})"
            )
        study_name = names[0]
    if study_name not in names:
        storage.engine.dispose()
        raise StorageError(
            f"no study '{study_name}' in {store.redact(storage_url)}; studies there: {', '.join(names) or 'none'}"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    return StudyView(study, storage_url, storage.engine)


class StudyView:
    """A read-only, incrementally refreshed view of one study. Thread-safe."""

    def __init__(self, study: optuna.Study, storage_url: str, engine: Engine) -> None:
        self._study = study
        self._engine = engine
        self.storage_url = storage_url
        self.name: str = study.study_name
        self.directions: tuple[str, ...] = tuple(d.name.lower() for d in study.directions)
        self.user_attrs: dict[str, Any] = dict(study.user_attrs)
        self._lock = threading.Lock()
        self._records: dict[int, tuple[FrozenTrial, TrialRecord]] = {}
        # finished trials whose ms_ record may still be on its way (written after tell)
        self._awaiting: set[int] = set()
        self._has_store = False
        self._check_store()
        settings = store.read_study(engine, self.name) if self._has_store else None
        names = study.metric_names or study.user_attrs.get(STUDY_ATTR_OBJECTIVE_NAMES)
        if settings is not None and len(settings.objectives) == len(self.directions):
            names = [objective["name"] for objective in settings.objectives]
            if settings.reference_point:
                self.user_attrs.setdefault(STUDY_ATTR_REFERENCE_POINT, settings.reference_point)
        if not names or len(names) != len(self.directions):
            names = [f"objective_{i}" for i in range(len(self.directions))]
        self.objective_names: tuple[str, ...] = tuple(str(n) for n in names)

    def _check_store(self) -> None:
        # The first worker creates the ms_ tables, possibly after the dashboard opened.
        if not self._has_store:
            self._has_store = sqlalchemy.inspect(self._engine).has_table("ms_trials")

    @property
    def reference_point(self) -> tuple[float, ...] | None:
        """The hypervolume reference point the search pinned for this study, if any."""
        point = self.user_attrs.get(STUDY_ATTR_REFERENCE_POINT)
        if isinstance(point, Sequence) and len(point) == len(self.directions):
            return tuple(float(v) for v in point)
        return None

    def trials(self) -> list[TrialRecord]:
        """Every trial, sorted by number, re-reading only what changed since the last call."""
        with self._lock:
            frozen = self._study.get_trials(deepcopy=False)
            # The cached storage keeps the same object for a trial that did not change.
            changed = [
                t
                for t in frozen
                if t.number not in self._records or self._records[t.number][0] is not t or t.number in self._awaiting
            ]
            extra = self._store_records([t.number for t in changed if t.state.is_finished()])
            for trial in changed:
                rich = extra.get(trial.number)
                self._records[trial.number] = (trial, join_trial_record(trial, rich))
                self._awaiting.discard(trial.number)
                if rich is None and self._has_store and finished_recently(trial):
                    self._awaiting.add(trial.number)
            return [self._records[t.number][1] for t in frozen]

    def _store_records(self, numbers: list[int]) -> dict[int, store.TrialRecord]:
        if not numbers:
            return {}
        self._check_store()
        if not self._has_store:
            return {}
        try:
            if len(numbers) > 20:  # one bulk read beats many small ones
                wanted = set(numbers)
                rows = store.read_trials(self._engine, self.name)
                return {r.trial_number: r for r in rows if r.trial_number in wanted}
            found = (store.read_trial(self._engine, self.name, n) for n in numbers)
            return {r.trial_number: r for r in found if r is not None}
        except StorageError:
            # A worker mid-migration or a locked file: show Optuna's facts now, join later.
            return {}

    def trial(self, number: int) -> TrialRecord:
        """One trial by number.

        Raises:
            StorageError: no trial with that number.
        """
        for record in self.trials():
            if record.number == number:
                return record
        raise StorageError(f"study '{self.name}' has no trial {number}; see `morsearch report` for the numbers")

    def pareto_trials(self, *, feasible_only: bool = True) -> list[TrialRecord]:
        """Completed trials that no other completed (and feasible) trial dominates."""
        done = [t for t in self.trials() if t.is_complete and (t.feasible or not feasible_only)]
        if not done:
            return []
        mask = pareto_mask(np.array([t.values for t in done], dtype=float), self.directions)
        return [t for t, keep in zip(done, mask, strict=True) if keep]

    def close(self) -> None:
        """Release the store's connections."""
        self._engine.dispose()


def finished_recently(trial: FrozenTrial, window_s: float = 600.0) -> bool:
    """Finished within ``window_s``: its ms_ record (written after ``tell``) may still be on its way."""
    done = trial.datetime_complete
    return done is not None and (datetime.now() - done).total_seconds() < window_s


def join_trial_record(trial: FrozenTrial, rich: store.TrialRecord | None = None) -> TrialRecord:
    """Optuna's trial joined with its ms_ record; the record wins where both have a fact."""
    attrs = dict(trial.user_attrs)
    values = tuple(float(v) for v in trial.values) if trial.values is not None else None
    constraints = {
        key.split(":", 1)[1]: float(v) for key, v in trial.system_attrs.items() if key.startswith("constraints:")
    }
    legacy = trial.system_attrs.get("constraints")
    if isinstance(legacy, Sequence):  # the pre-5.0 constraints_func list
        constraints.update({f"c{i}": float(v) for i, v in enumerate(legacy)})
    curve = tuple((float(x), float(y)) for x, y in attrs.get(ATTR_CURVE) or ())
    duration = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    gpu = attrs.get(ATTR_GPU_SECONDS, duration)
    failure = attrs.get(ATTR_FAILURE)
    if failure is None and trial.state.name == "FAIL":
        failure = trial.system_attrs.get("fail_reason")
    record = TrialRecord(
        number=trial.number,
        state=trial.state.name,
        values=values,
        params=dict(trial.params),
        user_attrs=attrs,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        model_config=attrs.get(ATTR_MODEL_CONFIG),
        curve=curve,
        routing=tuple(float(v) for v in attrs.get(ATTR_ROUTING) or ()),
        phase_seconds={str(k): float(v) for k, v in (attrs.get(ATTR_PHASE_SECONDS) or {}).items()},
        measurement=dict(attrs.get(ATTR_MEASUREMENT) or {}),
        failure_reason=str(failure) if failure is not None else None,
        baseline=attrs.get(ATTR_BASELINE),
        constraints=constraints,
        gpu_seconds=float(gpu) if gpu is not None and math.isfinite(float(gpu)) else None,
    )
    if rich is None:
        return record
    joined: dict[str, Any] = {
        "model_config": rich.model_config,
        "sections": {k: v for k, v in (("budget", rich.budget), ("data", rich.data), ("target", rich.target)) if v},
        "analytic": dict(rich.analytic or {}),
    }
    if rich.curve:
        joined["curve"] = tuple((float(x), float(y)) for x, y in rich.curve)
    if rich.routing:
        joined["routing"] = tuple(float(v) for v in rich.routing)
    if rich.phase_seconds:
        joined["phase_seconds"] = {str(k): float(v) for k, v in rich.phase_seconds.items()}
    if rich.measurement:
        joined["measurement"] = dict(rich.measurement)
    if rich.failure_reason:
        joined["failure_reason"] = rich.failure_reason
        joined["failure_detail"] = rich.failure_detail
    if rich.constraints and not constraints:
        joined["constraints"] = {str(k): float(v) for k, v in rich.constraints.items()}
    if rich.device_seconds is not None:
        joined["gpu_seconds"] = float(rich.device_seconds)
    return dataclasses.replace(record, **joined)


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n, num_objectives).

    A row is dominated when another is at least as good in every objective and better
    in one. Duplicated optimal rows are all kept. Runs in O(n x front size), vectorised.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"values must be (n, {len(directions)}), got {values.shape}")
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    losses = values * signs  # everything minimised from here on
    # Simple cull: the lexicographically smallest remaining row is non-dominated; keep it
    # and drop every row it dominates. One vectorised pass per front member, so this is
    # fast when the front is small next to the study, as it is in practice.
    remaining = np.lexsort(losses.T[::-1])
    front: list[int] = []
    while remaining.size:
        best, rest = remaining[0], remaining[1:]
        front.append(int(best))
        others = losses[rest]
        dominated = np.all(losses[best] <= others, axis=1) & np.any(losses[best] < others, axis=1)
        remaining = rest[~dominated]
    mask = np.zeros(len(values), dtype=bool)
    mask[front] = True
    return mask
