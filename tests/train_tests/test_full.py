from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from morsearch.cli import app
from morsearch.config import ModelConfig
from morsearch.model import build_model
from morsearch.train.full import train_full

from .helpers import DATA, steps_budget, tiny_mor

CONSTANT_LR = dict(warmup_fraction=0.0, decay_fraction=0.0)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    straight = train_full(tiny_mor(), steps_budget(40, **CONSTANT_LR), DATA, tmp_path / "a", progress=False)
    first = train_full(tiny_mor(), steps_budget(20, **CONSTANT_LR), DATA, tmp_path / "b", progress=False)
    resumed = train_full(tiny_mor(), steps_budget(40, **CONSTANT_LR), DATA, tmp_path / "b", progress=False)
    assert first.steps == 20 and resumed.resumed_from_step == 20 and resumed.steps == 40
    # same weights, optimiser state and data position: the same numbers as one run
    assert resumed.curve == straight.curve[-2:]
    assert resumed.val_nll == pytest.approx(straight.val_nll, abs=1e-6)


def test_outputs_load_with_weights_only(tmp_path: Path) -> None:
    result = train_full(tiny_mor(), steps_budget(10), DATA, tmp_path, progress=False, checkpoint_every=5)
    saved = torch.load(result.model_path, weights_only=True)
    model = build_model(ModelConfig(**saved["model_config"]))
    model.load_state_dict(saved["state_dict"])
    checkpoint = torch.load(result.checkpoint_path, weights_only=True)
    assert checkpoint["global_step"] == 10
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_nll"] == pytest.approx(result.val_nll) and metrics["steps"] == 10


def test_train_command(tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    sections = {
        "model": tiny_mor().model_dump(mode="json", exclude_unset=True),
        "budget": steps_budget(10).model_dump(mode="json"),
        "data": {"builtin_tokens": 40_000},
    }
    config.write_text(yaml.safe_dump(sections))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["steps"] == 10 and (out / "model.pt").is_file()


def test_train_command_without_budget_names_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_mor().model_dump(mode="json", exclude_unset=True)}))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code != 0
    assert "no 'budget:' section" in str(result.exception)
