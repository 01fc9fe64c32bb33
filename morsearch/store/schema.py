"""morsearch's tables, beside Optuna's in the same database.

Optuna keeps each trial's parameters, objective values and state. These ``ms_``
tables keep what Optuna does not: the resolved configs, the learning curve, the
measurement, routing statistics, phase timings, hardware and versions, why a trial
failed, and exports. Rows refer to Optuna trials by ``(study_name, trial_number)``
(stable and readable) and by Optuna's ``trial_id``; there is no foreign key into
Optuna's tables so that either side can be created first.

::

    ms_studies 1──* ms_trials 1──* ms_curve_points
                        │  1──1 ms_measurements
    ms_exports (study_name, trial_number)      ms_schema (version)

Schema changes: bump ``SCHEMA_VERSION`` and append a step to ``MIGRATIONS``;
``ensure_schema`` applies the missing steps under a cross-process lock, so many
workers may start at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from morsearch.errors import StorageError
from morsearch.store.engine import redact, storage_lock

SCHEMA_VERSION = 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class SchemaVersion(Base):
    """One row: the version of the ``ms_`` schema in this database."""

    __tablename__ = "ms_schema"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class StudyRow(Base):
    """A study's search space and settings, written once when the study is created."""

    __tablename__ = "ms_studies"
    study_name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    space_path: Mapped[str | None] = mapped_column(sa.Text)
    space: Mapped[dict[str, Any]] = mapped_column(doc="The validated search space (model_dump).")
    objectives: Mapped[list[Any]] = mapped_column(doc="[{name, direction}] in Optuna's value order.")
    reference_point: Mapped[list[Any] | None] = mapped_column(
        sa.JSON, doc="Hypervolume reference point, pinned per space (in Optuna's value order)."
    )
    n_trials: Mapped[int] = mapped_column(doc="Total trials the study runs, across all workers.")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class TrialRow(Base):
    """The rich record of one finished Optuna trial (complete, pruned or failed)."""

    __tablename__ = "ms_trials"
    __table_args__ = (sa.UniqueConstraint("study_name", "trial_number", name="uq_ms_trials_study_number"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(sa.String(128), index=True)
    trial_number: Mapped[int]
    optuna_trial_id: Mapped[int | None]
    state: Mapped[str] = mapped_column(sa.String(16), doc="complete | pruned | failed")
    config_hash: Mapped[str] = mapped_column(sa.String(64), index=True, doc="Hash of model+budget+data+target.")
    model_config: Mapped[dict[str, Any]]
    budget: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    data: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    target: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    objectives: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, doc="Objective name -> value.")
    constraints: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, doc="Constraint name -> value (>0 violated).")
    analytic: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, doc="Sizing: params, FLOPs, KV bytes.")
    val_nll: Mapped[float | None]
    tokens_seen: Mapped[int | None] = mapped_column(sa.BigInteger)
    stopped_early: Mapped[bool] = mapped_column(default=False)
    reused_from: Mapped[str | None] = mapped_column(sa.String(160), doc="'study#number' whose result was reused.")
    failure_reason: Mapped[str | None] = mapped_column(sa.String(32), doc="oom | nan | config | interrupted | error")
    failure_detail: Mapped[str | None] = mapped_column(sa.Text)
    requested_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, doc="For oom: what was asked for.")
    routing: Mapped[list[Any] | None] = mapped_column(sa.JSON, doc="Share of tokens reaching each recursion step.")
    phase_seconds: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    device_seconds: Mapped[float | None] = mapped_column(doc="Wall seconds the trial held its device.")
    hardware: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    versions: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    worker: Mapped[str | None] = mapped_column(sa.String(160), doc="host:pid of the worker.")
    started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    curve: Mapped[list[CurvePointRow]] = relationship(
        back_populates="trial", cascade="all, delete-orphan", order_by="CurvePointRow.tokens_seen"
    )
    measurement: Mapped[MeasurementRow | None] = relationship(back_populates="trial", cascade="all, delete-orphan")


class CurvePointRow(Base):
    """One validation point of a trial's learning curve."""

    __tablename__ = "ms_curve_points"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("ms_trials.id", ondelete="CASCADE"), index=True)
    tokens_seen: Mapped[int] = mapped_column(sa.BigInteger)
    val_nll: Mapped[float]
    trial: Mapped[TrialRow] = relationship(back_populates="curve")


class MeasurementRow(Base):
    """The inference measurement of a trial on its deployment target."""

    __tablename__ = "ms_measurements"
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("ms_trials.id", ondelete="CASCADE"), primary_key=True)
    device: Mapped[str | None] = mapped_column(sa.String(160))
    peak_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    kv_cache_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    param_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    prefill_tokens_per_s: Mapped[float | None]
    decode_tokens_per_s: Mapped[float | None]
    latency_p50_ms: Mapped[float | None]
    latency_p90_ms: Mapped[float | None]
    decode_cv: Mapped[float | None]
    raw: Mapped[dict[str, Any]] = mapped_column(doc="Measurement.to_dict(), everything it reported.")
    trial: Mapped[TrialRow] = relationship(back_populates="measurement")


class ExportRow(Base):
    """A configuration a user exported from a study (CLI or dashboard)."""

    __tablename__ = "ms_exports"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(sa.String(128), index=True)
    trial_number: Mapped[int]
    path: Mapped[str] = mapped_column(sa.Text)
    content: Mapped[str] = mapped_column(sa.Text, doc="The YAML written.")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


MS_TABLES = tuple(sorted(Base.metadata.tables))


def _create_v1(connection: Connection) -> None:
    Base.metadata.create_all(connection)


# MIGRATIONS[i] brings a database from version i to i + 1.
MIGRATIONS: list[Callable[[Connection], None]] = [_create_v1]
assert len(MIGRATIONS) == SCHEMA_VERSION


def schema_version(engine: Engine) -> int:
    """The ``ms_`` schema version of the database (0 where none was created)."""
    if not sa.inspect(engine).has_table(SchemaVersion.__tablename__):
        return 0
    with engine.connect() as connection:
        version = connection.execute(sa.select(SchemaVersion.version)).scalar()
    return version or 0


def ensure_schema(engine: Engine) -> int:
    """Create or upgrade the ``ms_`` tables; safe when many workers start at once.

    Returns:
        The schema version now in the database.

    Raises:
        StorageError: The database was written by a newer morsearch, or cannot be written.
    """
    # Cheap check first: the usual case (already current) takes no lock.
    try:
        if schema_version(engine) == SCHEMA_VERSION:
            return SCHEMA_VERSION
        with storage_lock(engine, "schema"):
            current = schema_version(engine)
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"storage {redact(str(engine.url))} has morsearch schema v{current}, newer than this "
                    f"morsearch (v{SCHEMA_VERSION}); upgrade morsearch (pip install -U morsearch)"
                )
            with engine.begin() as connection:
                for step in MIGRATIONS[current:]:
                    step(connection)
                table = SchemaVersion.__table__
                if current == 0:
                    connection.execute(sa.insert(table).values(id=1, version=SCHEMA_VERSION, updated_at=utcnow()))
                else:
                    connection.execute(sa.update(table).values(version=SCHEMA_VERSION, updated_at=utcnow()))
    except sa.exc.SQLAlchemyError as err:
        raise StorageError(f"storage {redact(str(engine.url))}: cannot create morsearch's tables: {err}") from err
    return SCHEMA_VERSION
