from __future__ import annotations

import math

import pytest

from morsearch.config import TrainBudget
from morsearch.errors import ConfigError
from morsearch.model import sizing
from morsearch.train import lr_factor, planned_steps

from .helpers import tiny_mor


def test_wsd_warms_up_holds_then_cools_down() -> None:
    budget = TrainBudget(value=1, warmup_fraction=0.1, decay_fraction=0.2, schedule="wsd")
    assert lr_factor(budget, 0.0) == 0.0
    assert lr_factor(budget, 0.05) == pytest.approx(0.5)
    assert lr_factor(budget, 0.1) == 1.0 and lr_factor(budget, 0.8) == 1.0
    assert lr_factor(budget, 0.9) == pytest.approx(0.5)
    assert lr_factor(budget, 1.0) == pytest.approx(0.0)


def test_cosine_decays_to_the_floor() -> None:
    budget = TrainBudget(value=1, warmup_fraction=0.0, schedule="cosine", min_lr_fraction=0.1)
    assert lr_factor(budget, 0.0) == pytest.approx(1.0)
    assert lr_factor(budget, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(budget, 1.0) == pytest.approx(0.1)
    assert lr_factor(budget, 0.25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_flops_budget_counts_training_flops_per_token() -> None:
    cfg = tiny_mor()
    per_step = sizing.training_flops_per_token(cfg, 32) * 8 * 32
    budget = TrainBudget(kind="flops", value=per_step * 12.5, batch_size=8, seq_len=32)
    assert planned_steps(cfg, budget) == 12
    assert planned_steps(cfg, budget.replace(kind="tokens", value=8 * 32 * 7)) == 7
    assert planned_steps(cfg, budget.replace(kind="seconds", value=3)) is None


def test_routed_out_tokens_buy_more_steps_at_equal_flops() -> None:
    """The paper's iso-FLOP comparison: MoR trains on more tokens than its recursive twin."""
    budget = TrainBudget(kind="flops", value=1e11, batch_size=8, seq_len=32)
    assert planned_steps(tiny_mor(), budget) > planned_steps(tiny_mor(router="none"), budget)


def test_budget_below_one_step_and_too_long_sequences_are_refused() -> None:
    with pytest.raises(ConfigError, match="less than one optimizer step"):
        planned_steps(tiny_mor(), TrainBudget(kind="flops", value=10, batch_size=8, seq_len=32))
    with pytest.raises(ConfigError, match="exceeds the model's max_seq_len=32"):
        planned_steps(tiny_mor(), TrainBudget(kind="steps", value=10, seq_len=64))


def test_budget_validation_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="warmup_fraction \\+ decay_fraction"):
        TrainBudget(value=1, warmup_fraction=0.5, decay_fraction=0.6)
    with pytest.raises(ConfigError, match="whole number"):
        TrainBudget(kind="steps", value=2.5)


def test_validation_count_follows_its_cost() -> None:
    from morsearch.train.proxy import eval_interval

    budget = TrainBudget(kind="steps", value=100, batch_size=8, seq_len=32)  # 256 tokens a step
    assert eval_interval(budget, 100, val_tokens=256) == 13  # cheap validation: 8 per run
    assert eval_interval(budget, 100, val_tokens=256 * 100) == 50  # costly: the minimum of 2
    assert eval_interval(budget.replace(eval_every=7), 100, val_tokens=10**9) == 7
