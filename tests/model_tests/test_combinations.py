"""Behaviour 1: every combination of the design space builds, runs forward and backward, and learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from morsearch.errors import ConfigError
from morsearch.model import build_model

from .helpers import all_combinations, config_id, is_valid_combination, tiny, valid_configs


@pytest.mark.parametrize("combination", all_combinations(), ids=lambda c: "-".join(map(str, c)))
def test_invalid_combinations_are_refused_and_valid_ones_build(combination):
    sharing, router, kv, nr = combination
    if is_valid_combination(sharing, router, nr):
        tiny(sharing, router, kv, nr)
    else:
        with pytest.raises(ConfigError) as info:
            tiny(sharing, router, kv, nr)
        assert "sharing" in str(info.value)


@pytest.mark.parametrize("cfg", valid_configs(), ids=config_id)
def test_loss_decreases_on_a_tiny_batch(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, cfg.vocab_size, (4, 17))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(8):
        out = model(inputs)
        loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
        (loss + out.aux_loss).backward()
        grads = [p.grad for p in model.layers.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        optimizer.zero_grad()
        model.after_optimizer_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
