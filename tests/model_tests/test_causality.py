"""Behaviour 3: in eval mode the logits at position t do not depend on tokens after t."""

from __future__ import annotations

import pytest
import torch

from morsearch.model import build_model

from .helpers import config_id, tiny, valid_configs

T, CUT = 20, 11


def _perturbed_pair(cfg):
    idx = torch.randint(0, cfg.vocab_size, (3, T))
    changed = idx.clone()
    changed[:, CUT + 1 :] = torch.randint(0, cfg.vocab_size, (3, T - CUT - 1))
    return idx, changed


@pytest.mark.parametrize("cfg", valid_configs(), ids=config_id)
def test_eval_logits_ignore_future_tokens(cfg):
    model = build_model(cfg).eval()
    idx, changed = _perturbed_pair(cfg)
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, : CUT + 1], b[:, : CUT + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, CUT + 1 :], b[:, CUT + 1 :])


def test_training_top_k_is_not_causal_which_is_why_eval_thresholds():
    """The paper's top-k over the sequence leaks the future; the remedy (aux loss + threshold)
    is what eval mode uses. This pins the problem down so the remedy stays necessary."""
    cfg = tiny("middle_cycle", "expert_choice", "recursion_wise", 3)
    model = build_model(cfg).train()
    leaked = False
    for seed in range(5):
        torch.manual_seed(seed)
        idx, changed = _perturbed_pair(cfg)
        with torch.no_grad():
            a, b = model(idx).logits, model(changed).logits
        leaked |= not torch.allclose(a[:, : CUT + 1], b[:, : CUT + 1], atol=1e-5)
    assert leaked
