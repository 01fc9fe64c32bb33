"""Behaviour 5: the accounting equals the built module, and the paper's shipped shapes match Tab. 6/9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from morsearch.config import ModelConfig, load_config
from morsearch.model import build_model, sizing

from .helpers import config_id, valid_configs

MODELS = Path(__file__).parents[2] / "search_spaces" / "models"
# Non-embedding unique parameters reported by the paper (Tab. 6 and Tab. 9), with the unit
# of the last digit it prints: a printed "42M" stands for anything in [41.5M, 42.5M).
#
# Why the tolerance is max(1 %, half that digit) and not a flat 1 %: the paper prints two or
# three significant digits, and for the 135M MoR-3 model its own rounding is coarser than 1 %.
# Its shape is fixed by the paper's rules: the 135M base (Tab. 6: d 576, 9/3 heads, FFN 1536)
# with Middle-Cycle 1+10+1 unique layers (Tab. 9). Each layer holds 3,540,096 parameters, so
# 12 layers + final norm + three linear routers = 42,483,456 = 42.48M, printed "42M", 1.15 % above
# 42M but inside its rounding. No other shape within those rules comes closer: 1+9+1 gives 38.9M
# (which the paper prints as 39M in Tab. 10, checked below) and 1+11+1 46.0M, and the width and
# FFN come from the base model. The 135M vanilla count (106.20M of "106M") agrees with the same
# per-layer count, so the accounting is right and only the printed precision is coarse.
PAPER_NON_EMBEDDING = {
    "smollm-135m-vanilla": (106e6, 1e6),
    "smollm-135m-mor3": (42e6, 1e6),
    "smollm-360m-vanilla": (315e6, 1e6),
    "smollm-360m-mor2": (167e6, 1e6),
    "smollm-360m-mor3": (118e6, 1e6),
    "smollm-360m-mor4": (98e6, 1e6),
    "smollm-730m-vanilla": (654e6, 1e6),
    "smollm-730m-mor3": (252e6, 1e6),
    "smollm-1.7b-vanilla": (1.61e9, 0.01e9),
    "smollm-1.7b-mor3": (0.67e9, 0.01e9),
}


def _module_parameters(model: torch.nn.Module) -> int:
    # parameters() yields each distinct Parameter once, so tied weights count once
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_NON_EMBEDDING))
def test_paper_shapes_match_the_paper_within_one_percent(name):
    cfg = load_config(MODELS / f"{name}.yaml", ModelConfig, section="model")
    printed, last_digit = PAPER_NON_EMBEDDING[name]
    # within 1 %, or within the paper's own rounding where that is coarser (42M: +-1.19 %)
    assert abs(cfg.non_embedding_parameters() - printed) <= max(0.01 * printed, last_digit / 2)
    with torch.device("meta"):  # the real module, without allocating its weights
        model = build_model(cfg)
    assert _module_parameters(model) == sizing.unique_parameters(cfg)


def test_135m_mor3_per_layer_count_matches_the_paper_at_every_depth():
    """The 42M entry passes only through the paper's rounding (see PAPER_NON_EMBEDDING); its
    per-layer count is checked exactly here, and against Tab. 10's 1+9+1 "39M" within 1 %."""
    cfg = load_config(MODELS / "smollm-135m-mor3.yaml", ModelConfig, section="model")
    assert cfg.layer_parameters() == 3_540_096
    assert cfg.non_embedding_parameters() == 12 * 3_540_096 + 576 + 3 * 576
    smaller = cfg.replace(num_layers=29)  # 1 + 9x3 + 1 effective layers, 11 unique
    assert smaller.num_unique_layers == 11
    assert smaller.non_embedding_parameters() == pytest.approx(39e6, rel=0.01)


@pytest.mark.parametrize("cfg", valid_configs(), ids=config_id)
def test_unique_parameters_equal_the_built_module(cfg):
    assert _module_parameters(build_model(cfg)) == sizing.unique_parameters(cfg)


@pytest.mark.parametrize("router_network", ["linear", "mlp", "wide_mlp"])
@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_router_parameters_are_counted(router, router_network):
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        num_layers=8,
        num_recursions=3,
        sharing="middle_cycle",
        router=router,
        router_network=router_network,
        tie_embeddings=False,
    )
    assert _module_parameters(build_model(cfg)) == sizing.unique_parameters(cfg)


@pytest.mark.parametrize("params", [3e5, 5e6, 5e7])
def test_from_param_budget_lands_within_two_percent(params):
    cfg = ModelConfig.from_param_budget(
        int(params),
        num_layers=8,
        head_dim=32,
        num_recursions=3,
        sharing="middle_cycle",
        router="expert_choice",
        vocab_size=256,
    )
    assert params * 0.98 <= sizing.unique_parameters(cfg) <= params  # within 2 %, and below it when it can be
    assert cfg.ffn_dim % 8 == 0 and cfg.d_model % cfg.num_heads == 0


def test_from_param_budget_refuses_an_impossible_budget():
    from morsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="params_unique=1,000 cannot be met"):
        ModelConfig.from_param_budget(1000, num_layers=8, vocab_size=256)


def test_training_flops_follow_the_paper_counting():
    cfg = load_config(MODELS / "smollm-360m-vanilla.yaml", ModelConfig, section="model")
    n = cfg.non_embedding_parameters() - cfg.d_model - 2 * cfg.d_model * cfg.num_layers  # matmul weights
    head = cfg.vocab_size * cfg.d_model
    attention = cfg.num_layers * 4 * cfg.d_model * (2048 + 1) / 2
    expected = 3 * (2 * (n + head) + attention)
    assert sizing.training_flops_per_token(cfg, 2048) == pytest.approx(expected)
    mor = load_config(MODELS / "smollm-360m-mor3.yaml", ModelConfig, section="model")
    # MoR-3 runs 2/3 of the tokens' block passes on average, so it costs clearly less per token
    assert sizing.training_flops_per_token(mor, 2048) < 0.75 * sizing.training_flops_per_token(cfg, 2048)
