"""The store against real databases: temp-file SQLite and a PostgreSQL schema."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from morsearch.errors import StorageError
from morsearch.store import (
    SCHEMA_VERSION,
    StudyRecord,
    TrialRecord,
    config_hash,
    dispose_engines,
    ensure_schema,
    find_completed,
    get_engine,
    read_exports,
    read_study,
    read_trial,
    read_trials,
    resolve_url,
    schema_version,
    session_scope,
    storage_lock,
    write_export,
    write_study,
    write_trial,
)
from morsearch.store.schema import MS_TABLES, SchemaVersion, TrialRow


def _record(number: int, **changes) -> TrialRecord:
    base = dict(
        study_name="s",
        trial_number=number,
        state="complete",
        config_hash=config_hash({"d_model": 32 + number}),
        model_config={"d_model": 32 + number},
        objectives={"val_nll": 2.0, "peak_memory": 1e6},
        val_nll=2.0,
        curve=((100, 3.0), (200, 2.5), (300, 2.0)),
        measurement={"device": "cpu", "peak_memory_bytes": 1_000_000, "decode_tokens_per_s": 55.5, "extra": 1},
        routing=[1.0, 0.5],
        phase_seconds={"train": 1.5, "measure": 0.2},
        hardware={"device": "cpu"},
    )
    base.update(changes)
    return TrialRecord(**base)


def test_resolve_url_defaults_and_aliases(tmp_path: Path) -> None:
    assert resolve_url(None, "quick", root=tmp_path) == f"sqlite:///{tmp_path.resolve()}/quick.db"
    assert resolve_url(str(tmp_path / "a.db"), "x") == f"sqlite:///{tmp_path / 'a.db'}"
    assert resolve_url("postgresql://u:pw@h:5432/db", "x") == "postgresql+psycopg://u:pw@h:5432/db"
    assert resolve_url("postgres://u@h/db", "x").startswith("postgresql+psycopg://")
    assert resolve_url("postgresql+psycopg2://u@h/db", "x") == "postgresql+psycopg2://u@h/db"


@pytest.mark.parametrize(
    ("storage", "study", "needle"),
    [
        ("mysql://u@h/db", "x", "SQLite (one machine) or PostgreSQL"),
        ("trials/study", "x", "neither a URL nor a .db file"),
        (None, "../escape", "study name"),
    ],
)
def test_resolve_url_refuses_with_fix(storage, study, needle) -> None:
    with pytest.raises(StorageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_url(storage, study)


def test_unreachable_server_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="check that the server runs"):
        get_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_schema_created_once_and_beside_optuna(storage_url: str) -> None:
    engine = get_engine(storage_url)
    assert schema_version(engine) == 0
    assert ensure_schema(engine) == SCHEMA_VERSION
    assert ensure_schema(engine) == SCHEMA_VERSION  # idempotent
    # Optuna's own tables go into the same database, and a stock Optuna reads the study.
    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
    study.add_trial(optuna.create_trial(values=[1.0, 2.0]))
    tables = set(sa.inspect(engine).get_table_names())
    assert set(MS_TABLES) <= tables and {"studies", "trials", "alembic_version"} <= tables
    assert len(optuna.load_study(study_name="s", storage=storage_url).trials) == 1
    storage.engine.dispose()


def test_newer_schema_is_refused(storage_url: str) -> None:
    engine = get_engine(storage_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        session.execute(sa.update(SchemaVersion).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(StorageError, match="upgrade morsearch"):
        ensure_schema(engine)


def test_trial_record_round_trip(storage_url: str) -> None:
    engine = get_engine(storage_url)
    ensure_schema(engine)
    write_trial(engine, _record(0))
    write_trial(engine, _record(1, state="failed", failure_reason="oom", requested_memory_bytes=2**34, curve=()))
    records = read_trials(engine, "s")
    assert [r.trial_number for r in records] == [0, 1]
    first = records[0]
    assert first.curve == ((100, 3.0), (200, 2.5), (300, 2.0))
    assert first.measurement["extra"] == 1 and first.routing == [1.0, 0.5]
    assert first.phase_seconds == {"train": 1.5, "measure": 0.2}
    assert records[1].failure_reason == "oom" and records[1].requested_memory_bytes == 2**34
    # The main measurement numbers are also plain columns (for SQL and dashboards).
    with session_scope(engine) as session:
        row = session.scalars(sa.select(TrialRow).where(TrialRow.trial_number == 0)).one()
        assert row.measurement.decode_tokens_per_s == pytest.approx(55.5)
    # Writing a trial again replaces it, curve included.
    write_trial(engine, _record(0, val_nll=1.0, curve=((10, 1.0),)))
    again = read_trial(engine, "s", 0)
    assert again.val_nll == 1.0 and again.curve == ((10, 1.0),)
    assert read_trial(engine, "s", 99) is None


def test_find_completed_skips_failed_reused_and_stopped(storage_url: str) -> None:
    engine = get_engine(storage_url)
    ensure_schema(engine)
    key = config_hash({"same": True})
    write_trial(engine, _record(0, config_hash=key, state="failed", failure_reason="nan"))
    write_trial(engine, _record(1, config_hash=key, reused_from="other#3"))
    write_trial(engine, _record(2, config_hash=key, state="pruned", stopped_early=True))
    assert find_completed(engine, key) is None
    write_trial(engine, _record(3, config_hash=key))
    assert find_completed(engine, key).trial_number == 3


def test_study_and_exports(storage_url: str) -> None:
    engine = get_engine(storage_url)
    ensure_schema(engine)
    record = StudyRecord(
        study_name="s", space={"a": 1}, objectives=[{"name": "val_nll", "direction": "minimize"}], n_trials=7
    )
    write_study(engine, record)
    write_study(engine, StudyRecord(**{**record.__dict__, "n_trials": 99}))  # first writer wins
    stored = read_study(engine, "s")
    assert stored.n_trials == 7 and stored.objectives[0]["name"] == "val_nll"
    assert read_study(engine, "missing") is None
    write_export(engine, "s", 3, "/tmp/x.yaml", "model: {}\n")
    assert read_exports(engine, "s")[0]["trial_number"] == 3


def test_session_scope_rolls_back_and_wraps_errors(storage_url: str) -> None:
    engine = get_engine(storage_url)
    ensure_schema(engine)
    write_trial(engine, _record(0))
    with pytest.raises(StorageError, match="storage"):
        with session_scope(engine) as session:
            session.add(TrialRow(**{**_row_values(_record(5))}))
            session.add(TrialRow(**{**_row_values(_record(0))}))  # duplicate (study, number)
    assert [r.trial_number for r in read_trials(engine, "s")] == [0]  # trial 5 rolled back too


def _row_values(record: TrialRecord) -> dict:
    return {
        k: v for k, v in record.__dict__.items() if k not in ("curve", "measurement", "finished_at") and v is not None
    }


def _ensure_in_child(url: str) -> int:
    return ensure_schema(get_engine(url))


def test_many_processes_create_schema_at_once(storage_url: str) -> None:
    dispose_engines()  # children must not share the parent's pooled connections
    with mp.get_context("fork").Pool(4) as pool:
        versions = pool.map(_ensure_in_child, [storage_url] * 4)
    assert versions == [SCHEMA_VERSION] * 4
    assert schema_version(get_engine(storage_url)) == SCHEMA_VERSION


def _hold_lock(url: str, seconds: float, out) -> None:
    with storage_lock(get_engine(url), "t"):
        entered = time.monotonic()
        time.sleep(seconds)
        out.put((entered, time.monotonic()))


def test_storage_lock_excludes_other_processes(storage_url: str) -> None:
    dispose_engines()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_hold_lock, args=(storage_url, 0.5, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    (in_a, out_a), (in_b, out_b) = sorted(queue.get(timeout=60) for _ in range(2))
    for w in workers:
        w.join(timeout=30)
    assert out_a <= in_b  # the second holder entered only after the first left
