"""A throw-away PostgreSQL schema per test (real server; skipped only when none answers).

The server is the one at ``MORSEARCH_TEST_PG`` (default: the project machine's
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test gets its own
schema through ``search_path``, so Optuna's and morsearch's tables of one test
never meet another's, and the schema is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("MORSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_available() -> bool:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sa.exc.OperationalError:
        return False


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose tables all land in a fresh schema, dropped on exit."""
    if not pg_available():
        pytest.skip(f"no PostgreSQL server answers at {PG_URL}")
    schema = f"mst_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        from morsearch.store import dispose_engines

        dispose_engines()
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
