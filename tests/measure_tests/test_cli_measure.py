"""``morsearch measure`` prints the Measurement; shipped targets validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from morsearch.cli import app
from morsearch.config import DeploymentTarget, load_config
from morsearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "search_spaces" / "models" / "tiny-mor.yaml"
TARGETS = sorted((ROOT / "search_spaces" / "targets").glob("*.yaml"))
QUICK_TARGET = "target:\n  device: cpu\n  dtype: float32\n  batch_size: 2\n  prompt_len: 8\n  new_tokens: 4\n"


def test_targets_ship_and_validate() -> None:
    assert {path.stem for path in TARGETS} >= {"cpu-edge", "h100-batch32"}
    for path in TARGETS:
        target = load_config(path, DeploymentTarget, section="target")
        assert target.name == path.stem


def test_measure_json(tmp_path: Path) -> None:
    target = tmp_path / "target.yaml"
    target.write_text(QUICK_TARGET)
    result = CliRunner().invoke(app, ["measure", str(TINY), "--target", str(target), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["target"]["batch_size"] == 2 and record["batch_size"] == 2
    assert record["decoder"] == "lockstep" and record["decode_tokens_per_s"] > 0
    assert record["kv_cache_bytes"] > 0 and len(record["step_token_fraction"]) == 3


def test_measure_table_reads_the_config_target_section(tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(TINY.read_text() + QUICK_TARGET)
    result = CliRunner().invoke(app, ["measure", str(config)])
    assert result.exit_code == 0, result.output
    assert "decode_tokens_per_s" in result.output and "MiB" in result.output
    assert "float32" in result.output  # the target came from the config file, not the bfloat16 default


def test_measure_bad_target_names_the_field(tmp_path: Path) -> None:
    target = tmp_path / "target.yaml"
    target.write_text("target:\n  dtype: fp16\n")
    with pytest.raises(ConfigError, match=r"target.yaml:2: target.dtype"):
        CliRunner().invoke(app, ["measure", str(TINY), "--target", str(target)], catch_exceptions=False)
