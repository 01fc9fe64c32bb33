"""Export a chosen trial as a deployment config YAML (what ``morsearch export`` writes).

The file is a model config file (docs/CONTRACTS.md "Config files"): a ``model:``
section of ``ModelConfig`` fields, loadable with
``load_config(path, ModelConfig, section="model")`` and by ``morsearch train``,
plus a ``metadata:`` section (study, trial, measured objectives) that the loaders
ignore. The store is only read; the one file written is the export itself.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from morsearch.config import ModelConfig
from morsearch.config.space import format_metric
from morsearch.errors import ConfigError, MorsearchError, StorageError
from morsearch.search.results import StudyView, TrialRecord, open_study
from morsearch.store import redact

__all__ = ["export_file_name", "export_to_folder", "export_trial", "render_export", "safe_stem", "trial_model_config"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def trial_model_config(record: TrialRecord) -> ModelConfig:
    """The ``ModelConfig`` a trial trained, validated.

    Raises:
        StorageError: the trial recorded no config (e.g. it failed before building its model).
    """
    fields = record.model_config
    if fields is None:
        if record.state == "FAIL":
            raise StorageError(
                f"trial {record.number} failed before recording its model config "
                f"({record.failure_reason or 'no reason recorded'}); export a completed trial"
            )
        raise StorageError(
            f"trial {record.number} has no recorded model config (user attribute 'model_config'); "
            "export a trial run by `morsearch search`"
        )
    try:
        return ModelConfig(**fields)
    except ConfigError as exc:
        raise StorageError(f"trial {record.number} recorded a model config that no longer validates: {exc}") from None


def render_export(view: StudyView, record: TrialRecord) -> str:
    """The YAML text of a trial's export: header comment, ``model:`` and ``metadata:``."""
    config = trial_model_config(record)
    objectives: dict[str, Any] = {}
    if record.values is not None:
        objectives = {
            name: {"value": value, "direction": direction}
            for name, value, direction in zip(view.objective_names, record.values, view.directions, strict=True)
        }
    metadata = {
        "study": view.name,
        "trial": record.number,
        "state": record.state,
        "storage": redact(view.storage_url),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "objectives": objectives,
        "params": dict(record.params),
    }
    if record.baseline:
        metadata["baseline"] = record.baseline
    header = (
        f"# morsearch export: study {view.name!r}, trial {record.number}\n"
        f"# train it with: morsearch train <this file>\n"
        + "".join(
            f"#   {name} = {format_metric(name, spec['value'])} ({spec['direction']})\n"
            for name, spec in objectives.items()
        )
    )
    # exclude_unset keeps the file to what the search chose; defaults stay defaults.
    body: dict[str, Any] = {"model": config.model_dump(mode="json", exclude_unset=True)}
    # budget/data/target as trained, so `morsearch train` on this file repeats the run
    body.update({name: dict(section) for name, section in record.sections.items()})
    body["metadata"] = metadata
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _write_atomic(path: Path, text: str) -> None:
    # A reader (or `morsearch train`) never sees a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_trial(storage_url: str, study_name: str, trial_number: int, out_path: str | Path) -> Path:
    """Write trial ``trial_number`` of ``study_name`` as a model config YAML at ``out_path``.

    Args:
        storage_url: the study store (opened read-only).
        study_name: the study.
        trial_number: Optuna's trial number (the ``#`` column of the report).
        out_path: the YAML file to write; its folder is created if missing.

    Returns:
        The path written.

    Raises:
        StorageError: store, study or trial missing, or the trial has no model config.
    """
    view = open_study(storage_url, study_name)
    try:
        text = render_export(view, view.trial(trial_number))
    finally:
        view.close()
    path = Path(out_path)
    if path.is_dir():
        raise MorsearchError(f"{path} is a folder; pass a file name such as {path / 'model.yaml'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text)
    return path


def safe_stem(name: str) -> str:
    """``name`` reduced to letters, digits, '.', '_' and '-' (no separators, no leading dot)."""
    return (_UNSAFE.sub("_", name).strip("._") or "study")[:80]


def export_file_name(study_name: str, trial_number: int) -> str:
    """A file name made only of safe characters, whatever the study name holds."""
    return f"{safe_stem(study_name)}-trial{int(trial_number)}.yaml"


def export_to_folder(view: StudyView, trial_number: int, folder: str | Path) -> Path:
    """Export into ``folder`` under a sanitised name; never writes outside ``folder``.

    Used by the live dashboard, where the study name comes from the store, not the user.

    Raises:
        StorageError: the trial cannot be exported.
        MorsearchError: the target already exists as a symlink leading out of ``folder``.
    """
    folder = Path(folder).resolve()
    text = render_export(view, view.trial(int(trial_number)))
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / export_file_name(view.name, trial_number)).resolve()
    if path.parent != folder:
        raise MorsearchError(f"refusing to write {path}: outside the export folder {folder}")
    _write_atomic(path, text)
    return path
