"""``morsearch measure`` prints the Measurement, of random or trained weights; shipped targets validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from morsearch.cli import app
from morsearch.config import DeploymentTarget, ModelConfig, load_config
from morsearch.errors import ConfigError
from morsearch.measure import measure
from morsearch.model import build_model, load_trained, save_trained

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


def _trained_tiny(path: Path) -> Path:
    """TINY with the random weights of seed 0 (measure's own), every router decision flipped."""
    torch.manual_seed(0)
    model = build_model(load_config(TINY, ModelConfig, section="model"))
    with torch.no_grad():
        for network in model.router.networks:  # a token goes on where the score is > 0
            network.weight.neg_()
    save_trained(model, path, step=7)
    return path


def test_measure_trained_weights_decide_the_depths(tmp_path: Path) -> None:
    weights, target = _trained_tiny(tmp_path / "model.pt"), tmp_path / "target.yaml"
    target.write_text(QUICK_TARGET)
    runs = {}
    for label, extra in (("trained", ["--weights", str(weights)]), ("random", [])):
        result = CliRunner().invoke(app, ["measure", str(TINY), "--target", str(target), "--json", *extra])
        assert result.exit_code == 0, result.output
        runs[label] = json.loads(result.output)["step_token_fraction"]
    direct = measure(load_trained(weights), load_config(target, DeploymentTarget, section="target"))
    assert runs["trained"] == list(direct.step_token_fraction)
    assert runs["trained"] != runs["random"]  # the trained routers decided, not seed 0's


def test_measure_weights_of_another_model_name_the_fields(tmp_path: Path) -> None:
    weights = _trained_tiny(tmp_path / "model.pt")
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("d_model: 64", "d_model: 32").replace("ffn_dim: 176", "ffn_dim: 88"))
    with pytest.raises(ConfigError, match=r"model.pt holds a model other than .*d_model=64 \(CONFIG: 32\)"):
        CliRunner().invoke(app, ["measure", str(other), "--weights", str(weights)], catch_exceptions=False)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such weights file"),
        (b"not a torch file", "not a weights file torch can read safely"),
        ({"state_dict": {}}, "holds no 'model_config' and 'state_dict'"),
    ],
)
def test_measure_bad_weights_files_are_named(tmp_path: Path, content: object, problem: str) -> None:
    weights = tmp_path / "model.pt"
    if isinstance(content, bytes):
        weights.write_bytes(content)
    elif content is not None:
        torch.save(content, weights)
    with pytest.raises(ConfigError, match=f"model.pt: {problem}"):
        CliRunner().invoke(app, ["measure", str(TINY), "--weights", str(weights)], catch_exceptions=False)


def test_measure_weights_that_do_not_fit_their_config_are_named(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    config = load_config(TINY, ModelConfig, section="model")
    torch.save({"model_config": config.model_dump(mode="json"), "state_dict": {}}, weights)
    with pytest.raises(ConfigError, match="model.pt: its weights do not fit its model_config"):
        CliRunner().invoke(app, ["measure", str(TINY), "--weights", str(weights)], catch_exceptions=False)
