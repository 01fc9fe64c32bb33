"""Write and read morsearch's records: plain frozen dataclasses in, rows out.

Every write is one transaction (``session_scope``), so a crash or Ctrl-C never
leaves half a record: either the trial row, its curve and its measurement are all
there, or none is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import selectinload

from morsearch.store.engine import session_scope
from morsearch.store.schema import CurvePointRow, ExportRow, MeasurementRow, StudyRow, TrialRow

MEASUREMENT_COLUMNS = (
    "device",
    "peak_memory_bytes",
    "kv_cache_bytes",
    "param_bytes",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "decode_cv",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyRecord:
    """A study's space and settings (one per study)."""

    study_name: str
    space: dict[str, Any]
    objectives: list[dict[str, str]]
    n_trials: int
    reference_point: list[float] | None = None
    space_path: str | None = None
    created_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """Everything morsearch keeps about one finished trial beyond Optuna's values.

    ``curve`` is ``[(tokens_seen, val_nll), ...]``; ``measurement`` is
    ``Measurement.to_dict()`` (its main numbers also get their own columns).
    """

    study_name: str
    trial_number: int
    state: str
    config_hash: str
    model_config: dict[str, Any]
    optuna_trial_id: int | None = None
    budget: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    objectives: dict[str, float] | None = None
    constraints: dict[str, float] | None = None
    analytic: dict[str, Any] | None = None
    val_nll: float | None = None
    tokens_seen: int | None = None
    stopped_early: bool = False
    reused_from: str | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    requested_memory_bytes: int | None = None
    routing: list[float] | None = None
    phase_seconds: dict[str, float] | None = None
    device_seconds: float | None = None
    hardware: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    worker: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    curve: tuple[tuple[int, float], ...] = ()
    measurement: dict[str, Any] | None = None


def config_hash(*parts: dict[str, Any] | None) -> str:
    """A stable hash of configs (model, budget, data, target): equal hash, identical run."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_study(engine: Engine, record: StudyRecord) -> None:
    """Store a study's settings if absent (the first worker wins; later calls change nothing)."""
    with session_scope(engine) as session:
        if session.get(StudyRow, record.study_name) is None:
            values = {k: v for k, v in dataclasses.asdict(record).items() if v is not None}
            session.add(StudyRow(**values))


def set_n_trials(engine: Engine, study_name: str, n_trials: int) -> None:
    """Change a study's total (a restart with a larger ``n_trials`` continues the study)."""
    with session_scope(engine) as session:
        row = session.get(StudyRow, study_name)
        if row is not None:
            row.n_trials = n_trials


def read_study(engine: Engine, study_name: str) -> StudyRecord | None:
    """The settings of ``study_name``, or ``None`` if the study was not created by morsearch."""
    with session_scope(engine) as session:
        row = session.get(StudyRow, study_name)
        if row is None:
            return None
        return StudyRecord(**{f.name: getattr(row, f.name) for f in dataclasses.fields(StudyRecord)})


def write_trial(engine: Engine, record: TrialRecord) -> None:
    """Store one trial's record with its curve and measurement, in one transaction.

    Writing the same ``(study_name, trial_number)`` again replaces the earlier record.
    """
    with session_scope(engine) as session:
        old = session.scalars(
            sa.select(TrialRow).where(
                TrialRow.study_name == record.study_name, TrialRow.trial_number == record.trial_number
            )
        ).first()
        if old is not None:
            session.delete(old)
            session.flush()
        values = {
            f.name: getattr(record, f.name)
            for f in dataclasses.fields(record)
            if f.name not in ("curve", "measurement") and getattr(record, f.name) is not None
        }
        row = TrialRow(**values)
        row.curve = [CurvePointRow(tokens_seen=int(t), val_nll=float(v)) for t, v in record.curve]
        if record.measurement is not None:
            row.measurement = MeasurementRow(
                raw=_jsonable(record.measurement),
                **{k: record.measurement.get(k) for k in MEASUREMENT_COLUMNS},
            )
        session.add(row)


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value, default=str))


def _to_record(row: TrialRow) -> TrialRecord:
    fields = {f.name for f in dataclasses.fields(TrialRecord)} - {"curve", "measurement"}
    return TrialRecord(
        **{name: getattr(row, name) for name in fields},
        curve=tuple((p.tokens_seen, p.val_nll) for p in row.curve),
        measurement=dict(row.measurement.raw) if row.measurement is not None else None,
    )


def read_trials(engine: Engine, study_name: str, *, since_id: int = 0) -> list[TrialRecord]:
    """All records of a study in trial order (``since_id``: only rows added after that row id)."""
    with session_scope(engine) as session:
        rows = session.scalars(
            sa.select(TrialRow)
            .where(TrialRow.study_name == study_name, TrialRow.id > since_id)
            .options(selectinload(TrialRow.curve), selectinload(TrialRow.measurement))
            .order_by(TrialRow.trial_number)
        ).all()
        return [_to_record(row) for row in rows]


def read_trial(engine: Engine, study_name: str, trial_number: int) -> TrialRecord | None:
    """The record of one trial, or ``None``."""
    with session_scope(engine) as session:
        row = session.scalars(
            sa.select(TrialRow)
            .where(TrialRow.study_name == study_name, TrialRow.trial_number == trial_number)
            .options(selectinload(TrialRow.curve), selectinload(TrialRow.measurement))
        ).first()
        return _to_record(row) if row is not None else None


def find_completed(engine: Engine, config_hash_value: str) -> TrialRecord | None:
    """An earlier completed, fully trained (not reused, not stopped early) trial of identical configs.

    Looks across every study in the database: the hash covers model, budget, data
    and target, so an equal hash means the run would repeat.
    """
    with session_scope(engine) as session:
        row = session.scalars(
            sa.select(TrialRow)
            .where(
                TrialRow.config_hash == config_hash_value,
                TrialRow.state == "complete",
                TrialRow.reused_from.is_(None),
                TrialRow.stopped_early.is_(False),
            )
            .options(selectinload(TrialRow.curve), selectinload(TrialRow.measurement))
            .order_by(TrialRow.id)
        ).first()
        return _to_record(row) if row is not None else None


def write_export(engine: Engine, study_name: str, trial_number: int, path: str, content: str) -> None:
    """Note that a trial's config was exported to ``path``."""
    with session_scope(engine) as session:
        session.add(ExportRow(study_name=study_name, trial_number=trial_number, path=path, content=content))


def read_exports(engine: Engine, study_name: str) -> list[dict[str, Any]]:
    """Exports of a study, oldest first: ``[{trial_number, path, content, created_at}]``."""
    with session_scope(engine) as session:
        rows = session.scalars(
            sa.select(ExportRow).where(ExportRow.study_name == study_name).order_by(ExportRow.id)
        ).all()
        return [
            {"trial_number": r.trial_number, "path": r.path, "content": r.content, "created_at": r.created_at}
            for r in rows
        ]
