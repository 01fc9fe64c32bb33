"""The static report: self-contained, every section present, hostile strings escaped."""

from __future__ import annotations

import re

import pytest

from morsearch.dashboard.report import plotly_js, write_report
from morsearch.errors import StorageError

from .conftest import copy_quickstart_store, fill_study

EVIL = "</script><script>alert('pwned')</script>"


def test_report_is_self_contained_and_complete(study_store, tmp_path):
    url, name = study_store
    path = write_report(url, name, tmp_path / "dash" / "demo.html")
    text = path.read_text()
    assert plotly_js() in text  # plotly.js itself is inside
    # around it, no external script, stylesheet, font or image is referenced (the browser
    # test checks at run time that plotly.js loads nothing either)
    ours = text.replace(plotly_js(), "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours)
    assert "@import" not in ours and "url(" not in ours
    for section in ("Pareto fronts", "Hypervolume", "Design choices", "The front's trials", "Front ("):
        assert section in text
    for div in (
        "pair0",
        "pair1",
        "pair2",
        "pareto3d",
        "hypervolume",
        "parallel",
        "importance",
        "curves",
        "routing",
        "phases",
    ):
        assert f'id="{div}"' in text
    assert "morsearch export --storage" in text and "oom: 1" in text


def test_report_escapes_store_strings(tmp_path):
    url = f"sqlite:///{tmp_path / 'evil.db'}"
    study = fill_study(url, EVIL, num_trials=3)
    study.trials  # noqa: B018  (the study exists)
    path = write_report(url, EVIL, tmp_path / "evil.html")
    text = path.read_text()
    assert "alert('pwned')</script>" not in text
    assert "&lt;/script&gt;" in text


def test_report_of_empty_study_and_bad_store(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(storage=url, study_name="empty", directions=["minimize", "maximize"])
    text = write_report(url, "empty", tmp_path / "e.html").read_text()
    assert "No completed trial yet" in text
    with pytest.raises(StorageError, match="no such store file"):
        write_report(f"sqlite:///{tmp_path / 'missing.db'}", "x", tmp_path / "m.html")
    assert not (tmp_path / "m.html").exists()


def test_report_of_a_real_quickstart_store(tmp_path):
    path = copy_quickstart_store(tmp_path / "qs.db")
    text = write_report(f"sqlite:///{path}", None, tmp_path / "qs.html").read_text()
    assert "morsearch report: quickstart" in text and 'id="curves"' in text and 'id="routing"' in text
    assert "peak_memory [bytes]" in text and "baseline: vanilla" in text
