"""The read-only view and the export on a real PostgreSQL store (skipped when no server answers)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from store_tests.pg import pg_schema_url

from morsearch.config import ModelConfig, load_config
from morsearch.dashboard.export import export_trial
from morsearch.dashboard.reader import open_live_study
from morsearch.dashboard.report import write_report
from morsearch.search.results import open_study

from .conftest import fill_study


def test_postgres_store_is_read_only_and_exportable(tmp_path):
    with pg_schema_url() as url:
        fill_study(url, "pg", num_trials=4)
        view = open_study(url, "pg")
        trials = view.trials()
        assert [t.state for t in trials].count("COMPLETE") == 6
        assert trials[2].curve and trials[3].curve  # ms_ record and user-attribute paths
        live = open_live_study(url, "pg")  # the live app's reader gives the same records
        assert live.trials() == trials
        live.close()
        with view._engine.connect() as connection, pytest.raises(sa.exc.InternalError, match="read-only"):
            connection.execute(sa.text("CREATE TABLE ms_probe (x int)"))
        view.close()
        path = export_trial(url, "pg", 2, tmp_path / "pg.yaml")
        assert load_config(path, ModelConfig, section="model").d_model > 0
        assert "Pareto fronts" in write_report(url, "pg", tmp_path / "pg.html").read_text()
