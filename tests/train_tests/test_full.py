from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from typer.testing import CliRunner

from morsearch.cli import app, main
from morsearch.config import ModelConfig, TrainBudget
from morsearch.model import build_model, load_trained
from morsearch.train.full import FullResult, eta_seconds, train_full

from .helpers import DATA, steps_budget, tiny_mor

CONSTANT_LR = dict(warmup_fraction=0.0, decay_fraction=0.0)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    straight = train_full(tiny_mor(), steps_budget(40, **CONSTANT_LR), DATA, tmp_path / "a", progress=False)
    first = train_full(tiny_mor(), steps_budget(20, **CONSTANT_LR), DATA, tmp_path / "b", progress=False)
    resumed = train_full(tiny_mor(), steps_budget(40, **CONSTANT_LR), DATA, tmp_path / "b", progress=False)
    assert first.steps == 20 and resumed.resumed_from_step == 20 and resumed.steps == 40
    # same weights, optimiser state and data position: the same numbers as one run
    assert resumed.curve == straight.curve
    assert resumed.val_nll == pytest.approx(straight.val_nll, abs=1e-6)


class _CtrlCAt(pl.Callback):
    """Sends this process a real SIGINT after ``step`` optimizer steps, as a terminal's Ctrl-C does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


class _CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


WSD_40 = steps_budget(40, warmup_fraction=0.1, decay_fraction=0.3, schedule="wsd")


def _assert_same_run(resumed: FullResult, straight: FullResult, out: Path) -> None:
    # the decay part of WSD runs after the resume, so a schedule restarted from 0 would show here
    assert (
        [tokens for tokens, _ in resumed.curve] == [tokens for tokens, _ in straight.curve] == [2560, 5120, 7680, 10240]
    )
    for (_, nll), (_, expected) in zip(resumed.curve, straight.curve, strict=True):
        assert nll == pytest.approx(expected, abs=1e-6)  # CPU, fp32, one thread: the same kernels
    assert [tokens for tokens, _ in resumed.routing_curve] == [tokens for tokens, _ in straight.routing_curve]
    assert resumed.val_nll == pytest.approx(straight.val_nll, abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())  # the whole run, not just the resumed part
    assert len(metrics["curve"]) == 4 and len(metrics["routing_curve"]) == 4


def test_ctrl_c_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """WSD schedule over a fixed 40-step budget, stopped by Ctrl-C at step 15 (between validations)."""
    budget = WSD_40
    straight = train_full(tiny_mor(), budget, DATA, tmp_path / "a", progress=False)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_full(tiny_mor(), budget, DATA, tmp_path / "b", progress=False, callbacks=[_CtrlCAt(15)])
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is undone
    checkpoint = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 15 and not (tmp_path / "b" / "metrics.json").exists()

    resumed = train_full(tiny_mor(), budget, DATA, tmp_path / "b", progress=False)
    assert resumed.resumed_from_step == 15 and resumed.steps == 40
    _assert_same_run(resumed, straight, tmp_path / "b")


def test_crash_resumes_from_the_periodic_checkpoint(tmp_path: Path) -> None:
    """A crash at step 25 loses steps 21-25; the step-20 checkpoint already holds the step-20 validation."""
    straight = train_full(tiny_mor(), WSD_40, DATA, tmp_path / "a", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_full(
            tiny_mor(), WSD_40, DATA, tmp_path / "b", progress=False, checkpoint_every=10, callbacks=[_CrashAt(25)]
        )
    resumed = train_full(tiny_mor(), WSD_40, DATA, tmp_path / "b", progress=False, checkpoint_every=10)
    assert resumed.resumed_from_step == 20
    _assert_same_run(resumed, straight, tmp_path / "b")


def test_outputs_load_with_weights_only(tmp_path: Path) -> None:
    result = train_full(tiny_mor(), steps_budget(10), DATA, tmp_path, progress=False, checkpoint_every=5)
    saved = torch.load(result.model_path, weights_only=True)
    model = build_model(ModelConfig(**saved["model_config"]))
    model.load_state_dict(saved["state_dict"])
    loaded = load_trained(Path(result.model_path))  # what `morsearch measure --weights` reads
    assert saved["step"] == 10 and loaded.cfg == model.cfg and not loaded.training
    pairs = zip(loaded.state_dict().items(), model.state_dict().items(), strict=True)
    assert all(k == j and torch.equal(a, b) for (k, a), (j, b) in pairs)
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


def test_train_command_with_bad_data_exits_2_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MORSEARCH_DEBUG", raising=False)
    config = tmp_path / "model.yaml"
    sections = {
        "model": tiny_mor().model_dump(mode="json", exclude_unset=True),
        "budget": steps_budget(10).model_dump(mode="json"),
        "data": {"source": "text", "path": str(tmp_path / "missing.txt")},
    }
    config.write_text(yaml.safe_dump(sections))
    with pytest.raises(SystemExit) as info:
        main(["train", str(config), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("missing.txt: no such file") == 1 and captured.err.startswith("error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before anything was made


def _write_config(path: Path) -> Path:
    sections = {
        "model": tiny_mor().model_dump(mode="json", exclude_unset=True),
        "budget": steps_budget(10, seed=3, compile=True).model_dump(mode="json"),
    }
    path.write_text(yaml.safe_dump(sections))
    return path


def test_train_command_flags_override_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[TrainBudget] = []

    def fake_train_full(model_config: ModelConfig, budget: TrainBudget, *args: object, **kwargs: object) -> FullResult:
        seen.append(budget)
        fields = {name: 0 for name in FullResult.__dataclass_fields__}
        return FullResult(**{**fields, "routing": [], "curve": [], "routing_curve": [], "model_path": "m"})

    monkeypatch.setattr("morsearch.train.full.train_full", fake_train_full)
    config = _write_config(tmp_path / "model.yaml")
    runner = CliRunner()
    for flags, expected in [
        ([], (10, 3, True)),  # the file's own budget
        (["--value", "20", "--seed", "7", "--no-compile"], (20, 7, False)),
        (["--seed", "0", "--compile"], (10, 0, True)),  # 0 is a seed, not "unset"
    ]:
        result = runner.invoke(app, ["train", str(config), "--json", *flags])
        assert result.exit_code == 0, result.output
        assert (seen[-1].value, seen[-1].seed, seen[-1].compile) == expected, flags


@pytest.mark.parametrize("value", ["0", "-5"])
def test_train_command_refuses_a_budget_value_not_above_zero(tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(app, ["train", str(_write_config(tmp_path / "model.yaml")), "--value", value])
    assert result.exit_code == 2
    assert "--value" in result.output and "must be > 0" in result.output, result.output


def test_train_command_without_budget_names_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_mor().model_dump(mode="json", exclude_unset=True)}))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code != 0
    assert "no 'budget:' section" in str(result.exception)


def test_eta_comes_from_steps_left_or_from_the_time_budget() -> None:
    assert eta_seconds(10, 40, steps_per_s=5.0, elapsed=2.0, budget_seconds=None) == pytest.approx(6.0)
    assert eta_seconds(10, 40, steps_per_s=0.0, elapsed=2.0, budget_seconds=None) is None  # no rate yet
    assert eta_seconds(10, None, steps_per_s=5.0, elapsed=2.5, budget_seconds=60.0) == pytest.approx(57.5)
    assert eta_seconds(10, None, steps_per_s=5.0, elapsed=61.0, budget_seconds=60.0) == 0.0
    assert eta_seconds(10, None, steps_per_s=5.0, elapsed=1.0, budget_seconds=None) is None


def test_progress_bar_shows_tokens_per_second_and_an_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A seconds budget has no step total; its ETA is the time left of the budget."""
    budget = steps_budget(kind="seconds", value=0.5, eval_every=1000)
    result = train_full(tiny_mor(), budget, DATA, tmp_path, progress=True, device="cpu")
    output = capsys.readouterr().out
    assert result.steps > 1
    assert re.search(r"\b[\d,]*[1-9][\d,]* tok/s", output), output  # a rate, not "-"
    assert re.search(r"ETA \d+:\d\d:\d\d", output) and "-:--:--" not in output, output
    assert re.search(r"loss \d+\.\d{3}", output) and re.search(r"val \d+\.\d{3}", output), output
