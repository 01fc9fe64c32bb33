"""Behaviour 2: routed-out tokens are gathered out, so forward FLOPs fall with capacity exactly as
``sizing`` predicts (``FlopCounterMode`` counts the matmuls; attention FLOPs are checked by the
same accounting's shape)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from morsearch.config import ModelConfig
from morsearch.model import build_model, sizing

from .helpers import TINY_SHAPE

T = 24


def _counted_forward_flops(cfg: ModelConfig) -> int:
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, T))
    with FlopCounterMode(display=False) as counter:
        model(idx)
    return counter.get_total_flops()


@pytest.mark.parametrize("kv_strategy", ["recursion_wise", "recursive_sharing"])
def test_expert_choice_flops_fall_with_capacity_as_predicted(kv_strategy):
    counted = []
    for capacities in [(1.0, 1.0, 1.0), (1.0, 2 / 3, 1 / 3), (1.0, 0.5, 0.25), (1.0, 0.25, 0.125)]:
        cfg = ModelConfig(
            **TINY_SHAPE, num_layers=8, num_recursions=3, sharing="middle_cycle",
            router="expert_choice", capacities=capacities, kv_strategy=kv_strategy,
        )
        flops = _counted_forward_flops(cfg)
        assert flops == sizing.forward_matmul_flops(cfg, batch_size=2, seq_len=T)
        counted.append(flops)
    assert counted == sorted(counted, reverse=True) and counted[-1] < 0.65 * counted[0]


def test_recursive_model_costs_its_full_depth_and_mor_less():
    recursive = ModelConfig(**TINY_SHAPE, num_layers=8, num_recursions=3, sharing="middle_cycle")
    mor = recursive.replace(router="expert_choice")
    vanilla = ModelConfig(**TINY_SHAPE, num_layers=8)
    assert _counted_forward_flops(recursive) == _counted_forward_flops(vanilla)
    ratio = _counted_forward_flops(mor) / _counted_forward_flops(recursive)
    assert ratio == pytest.approx(
        sizing.forward_matmul_flops(mor, 2, T) / sizing.forward_matmul_flops(recursive, 2, T)
    )
    assert ratio < 0.8


def test_token_choice_runs_the_block_only_on_routed_tokens():
    cfg = ModelConfig(**TINY_SHAPE, num_layers=8, num_recursions=3, sharing="middle_cycle", router="token_choice")
    model = build_model(cfg).eval()
    calls = []
    model.layers[1].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    idx = torch.randint(0, cfg.vocab_size, (1, T))
    out = model(idx)
    realised = (out.step_token_fraction * T).round().long().tolist()
    assert calls == realised  # the shared layer saw exactly the routed tokens at each step
    assert calls[0] == T and calls[1] <= T and calls[2] <= calls[1]
    # training pads the count up to the next eighth of the sequence (few compiled shapes), no more
    calls.clear()
    out = model.train()(idx)
    realised = (out.step_token_fraction * T).round().long().tolist()
    assert all(r <= c < r + T // 8 or c == T for r, c in zip(realised, calls, strict=True))
