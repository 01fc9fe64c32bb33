"""Export of a chosen trial: loadable model config, metadata, safe paths, clear errors."""

from __future__ import annotations

import os
import sqlite3

import pytest
import yaml

from morsearch.config import ModelConfig, load_config
from morsearch.dashboard.export import export_file_name, export_to_folder, export_trial
from morsearch.errors import StorageError
from morsearch.search.results import open_study

from .conftest import fill_study


def test_export_trial_loads_as_model_config(study_store, tmp_path):
    url, name = study_store
    view = open_study(url, name)
    record = view.pareto_trials()[0]
    path = export_trial(url, name, record.number, tmp_path / "out" / "model.yaml")
    assert path == tmp_path / "out" / "model.yaml"
    config = load_config(path, ModelConfig, section="model")
    assert config == ModelConfig(**record.model_config)
    data = yaml.safe_load(path.read_text())
    meta = data["metadata"]
    assert meta["study"] == name and meta["trial"] == record.number
    assert meta["objectives"]["val_nll"]["value"] == pytest.approx(record.values[0])
    assert meta["objectives"]["decode_tokens_per_s"]["direction"] == "maximize"
    assert "val_nll" in path.read_text().splitlines()[2]  # objectives in the header comment too
    if record.sections:  # the budget it trained with travels along (ms_ records)
        assert data["budget"] == dict(record.sections["budget"])
    view.close()


def test_export_errors_are_clear(study_store, tmp_path):
    url, name = study_store
    view = open_study(url, name)
    failed = next(t for t in view.trials() if t.state == "FAIL")
    with pytest.raises(StorageError, match="failed before recording its model config.*oom"):
        export_trial(url, name, failed.number, tmp_path / "x.yaml")
    with pytest.raises(StorageError, match="has no trial 999"):
        export_trial(url, name, 999, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()
    view.close()


def test_export_does_not_touch_the_store(study_store, tmp_path):
    url, name = study_store
    path = url.removeprefix("sqlite:///")

    def snapshot():
        with sqlite3.connect(path) as conn:
            return os.stat(path).st_mtime_ns, conn.execute("select count(*) from trial_user_attributes").fetchone()

    before = snapshot()
    export_trial(url, name, 3, tmp_path / "a.yaml")
    assert snapshot() == before


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/abs/olute", "..", "a/../../b", "<script>x</script>", "c\x00x"])
def test_export_file_name_is_safe(evil):
    name = export_file_name(evil, 7)
    assert "/" not in name and "\x00" not in name and not name.startswith(".")
    assert name.endswith("-trial7.yaml")


def test_export_to_folder_never_leaves_it(tmp_path):
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'evil.db'}"
    fill_study(url, "../../escape", num_trials=2)
    view = open_study(url, "../../escape")
    folder = tmp_path / "exports"
    path = export_to_folder(view, 2, folder)
    assert path.parent == folder.resolve() and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "exports"]
    assert [p.name for p in folder.iterdir()] == [path.name]
    # a symlink planted under the export name must not redirect the write outside
    outside = tmp_path / "outside.yaml"
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(Exception, match="outside the export folder"):
        export_to_folder(view, 2, folder)
    assert not outside.exists()
    view.close()
