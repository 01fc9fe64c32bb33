"""Store fixtures: a storage URL on temp-file SQLite and on a real PostgreSQL schema."""

from __future__ import annotations

import pytest

from morsearch.store import dispose_engines
from store_tests.pg import pg_schema_url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        dispose_engines()
    else:
        with pg_schema_url() as url:
            yield url
