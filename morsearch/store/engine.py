"""Storage URLs, engines, ``session_scope()`` and the cross-process lock.

One database holds a study: Optuna's tables and morsearch's ``ms_`` tables side by
side, so stock ``optuna-dashboard URL`` still opens it. SQLite (the default, at
``trials/<study>.db``) serves the workers of one machine; PostgreSQL serves
workers on many.

SQLite is opened in WAL mode (readers never block the writer) with a long busy
timeout, because several worker processes write the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from morsearch.errors import StorageError

DEFAULT_ROOT = Path("trials")
# Seconds a SQLite writer waits for the file lock before giving up (many workers share one file).
SQLITE_TIMEOUT_S = 120
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def check_study_name(name: str) -> str:
    """Return ``name`` if it is a valid study name (it names the default file), else raise StorageError."""
    if not _STUDY_NAME.match(name):
        raise StorageError(
            f"study name {name!r} is not allowed: use letters, digits, '_', '.' or '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


def default_storage_url(study_name: str, root: str | Path = DEFAULT_ROOT) -> str:
    """The SQLite URL of a study kept on this machine: ``sqlite:///<root>/<study>.db``."""
    path = Path(root).resolve() / f"{check_study_name(study_name)}.db"
    return f"sqlite:///{path}"


def resolve_url(storage: str | None, study_name: str, root: str | Path = DEFAULT_ROOT) -> str:
    """Turn what the user typed into a SQLAlchemy URL.

    Args:
        storage: ``None`` (the default SQLite file of the study), a path to a ``.db``
            file, or a SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``).
        study_name: The study; names the default file.
        root: Folder of the default SQLite files.

    Returns:
        A URL SQLAlchemy and Optuna accept. ``postgresql://`` and ``postgres://``
        get the psycopg (v3) driver, the one morsearch installs.

    Raises:
        StorageError: The URL is malformed or names a database morsearch does not support.
    """
    if storage is None or storage == "":
        return default_storage_url(study_name, root)
    if "://" not in storage:
        if storage.endswith((".db", ".sqlite", ".sqlite3")):
            return f"sqlite:///{Path(storage).resolve()}"
        raise StorageError(
            f"storage {storage!r} is neither a URL nor a .db file; use e.g. "
            "'sqlite:///trials/x.db' or 'postgresql://user@host:5432/dbname'"
        )
    try:
        url = make_url(storage)
    except exc.ArgumentError as err:
        raise StorageError(f"storage URL {redact(storage)!r} is malformed: {err}") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise StorageError(
            f"storage URL {redact(storage)!r}: backend {backend!r} is not supported; "
            "use SQLite (one machine) or PostgreSQL (several machines)"
        )
    return url.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (``None`` for in-memory databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def engine_kwargs(url: str) -> dict:
    """Engine options that also go to Optuna's ``RDBStorage(engine_kwargs=...)``."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    # One idle connection per worker: PostgreSQL allows ~100 in all. The claim lock and the
    # heartbeat thread briefly need a second one (overflow, closed after use).
    return {"pool_size": 1, "max_overflow": 4, "pool_pre_ping": True, "pool_recycle": 1800}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
    _enter_wal_mode(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL + NORMAL is durable against process crashes (only an OS crash can lose the last commit).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enter_wal_mode(cursor) -> None:
    """Switch a SQLite file to WAL, retrying while another process does the same.

    Several workers opening a fresh file at once race for the exclusive lock that the
    switch needs; SQLite answers the losers "database is locked" at once, without
    waiting on the busy timeout, so the wait happens here.
    """
    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def configure_engine(engine: Engine) -> None:
    """Give an engine built elsewhere (Optuna's) the SQLite settings morsearch relies on."""
    if engine.url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)


def get_engine(url: str) -> Engine:
    """The process-wide engine of ``url`` (created on first use, SQLite folder included).

    Raises:
        StorageError: The database cannot be reached.
    """
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        path = sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"cannot create the folder of {path}: {err}") from None
        engine = sa.create_engine(url, **engine_kwargs(url))
        configure_engine(engine)
        try:
            with engine.connect():
                pass
        except exc.SQLAlchemyError as err:
            engine.dispose()
            raise StorageError(
                f"cannot open storage {redact(url)}: {_short(err)}; check that the server runs "
                "and the URL (user, host, port, database) is right"
            ) from None
        _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (before a fork, and at the end of tests)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _short(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error.

    Raises:
        StorageError: A database error, with the cause chained (the session is rolled back).
    """
    session = sessionmaker(bind=engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except exc.SQLAlchemyError as err:
        session.rollback()
        raise StorageError(f"storage {redact(str(engine.url))}: {_short(err)}") from err
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextlib.contextmanager
def storage_lock(engine: Engine, name: str) -> Iterator[None]:
    """Hold a lock named ``name`` across every process using this database.

    PostgreSQL: a session-level advisory lock (released by the server if the process
    dies). SQLite: ``flock`` on ``<db>.<name>.lock`` beside the file (released by the
    kernel if the process dies); a SQLite write lock cannot be used because Optuna
    writes through its own connections while we hold it.
    """
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(str(engine.url.render_as_string(hide_password=False)))
        if path is None:  # in-memory: one process only
            yield
            return
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        lock_path = path.with_name(f"{path.name}.{safe}.lock")
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    key = zlib.crc32(f"morsearch:{name}".encode()) - 2**31  # advisory keys are signed 64-bit
    try:
        connection = engine.connect()
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        connection.commit()
    except exc.SQLAlchemyError as err:
        raise StorageError(f"storage {redact(str(engine.url))}: cannot take lock {name!r}: {_short(err)}") from err
    try:
        yield
    finally:
        try:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            connection.commit()
        finally:
            connection.close()
