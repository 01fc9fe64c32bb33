"""The CLI surface: the command list is pinned, every command has --help, errors are one message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from morsearch.cli import app, main

COMMANDS = [
    "dashboard", "describe", "export", "measure", "report", "search", "status", "train", "validate", "worker",
]
MODELS = Path(__file__).parents[2] / "search_spaces" / "models"
runner = CliRunner()


def test_the_command_list_is_pinned():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = sorted(command.name or command.callback.__name__ for command in app.registered_commands)
    assert listed == COMMANDS
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_measure_help_names_every_decoder():
    from morsearch.model.decoders import DECODERS  # the help is written out: the CLI imports no torch for it

    text = " ".join(runner.invoke(app, ["measure", "--help"], terminal_width=400).output.split())
    assert [name for name in DECODERS if f" {name}," not in text and f" {name} " not in text] == []


def test_describe_json_reports_the_accounting():
    result = runner.invoke(app, ["describe", str(MODELS / "smollm-360m-mor3.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["params_non_embedding"] == pytest.approx(118e6, rel=0.01)
    for key in ("params_unique", "flops_per_token", "kv_bytes_per_token"):
        assert record[key] > 0


def test_a_bad_config_is_one_message_and_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 64\n  num_heads: 4\n  ffn_dim: 64\n  num_layers: 4\n  shareing: cycle\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["describe", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean 'sharing'" in err and "Traceback" not in err
