"""A routed forward replayed with the widths of an earlier one (what a CUDA-graph capture of the
prefill runs): the same outputs with no host sync, and a check that tells a prompt that routes
to other shapes."""

from __future__ import annotations

import pytest
import torch

from morsearch.model import build_model
from morsearch.model.graphed import CapturedPrefill
from morsearch.model.routers import WidthPlan

from .helpers import tiny

PROMPT = 12


@pytest.fixture(params=["expert_choice", "token_choice"])
def model(request):
    torch.manual_seed(0)
    return build_model(tiny("middle_cycle", request.param, "recursion_wise", 3, shared_layers=2)).eval()


def test_last_only_gives_the_last_positions_logits(model):
    idx = torch.randint(0, model.cfg.vocab_size, (3, PROMPT))
    with torch.no_grad():
        full, last = model(idx).logits, model(idx, last_only=True).logits
    assert last.shape == (3, 1, model.cfg.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=1e-5)


def test_a_replayed_plan_gives_the_recorded_forward_without_reading_back(model, monkeypatch):
    idx = torch.randint(0, model.cfg.vocab_size, (3, PROMPT))
    plan = WidthPlan()
    with torch.no_grad():
        with plan.recording():
            recorded = model(idx, cache=model.new_cache(3), last_only=True).logits
        assert len(plan.widths) == 2  # steps 1 and 2 are routed (step 0 keeps all, or TC gives every token one)
        with monkeypatch.context() as patched:
            patched.setattr(torch.Tensor, "__int__", lambda self: pytest.fail("replay read a width back"))
            with plan.replaying():
                replayed = model(idx, cache=model.new_cache(3), last_only=True).logits
    torch.testing.assert_close(replayed, recorded, atol=0, rtol=0)
    assert [int(width) for width in plan.observed] == plan.widths


def test_the_observed_widths_tell_a_prompt_that_routes_otherwise(model):
    prompts = torch.randint(0, model.cfg.vocab_size, (8, 3, PROMPT))
    plan = WidthPlan()
    differ = []
    with torch.no_grad():
        with plan.recording():
            model(prompts[0], cache=model.new_cache(3))
        noted = list(plan.widths)
        for idx in prompts[1:]:
            with plan.replaying():
                model(idx, cache=model.new_cache(3))
            differ.append([int(width) for width in plan.observed] != noted)
            with plan.recording():  # the widths this prompt really asks for
                model(idx, cache=model.new_cache(3))
            assert differ[-1] == (plan.widths != noted)
            plan.widths = noted
    assert any(differ)  # (a prompt that routes alike: the test above)


def test_prefill_on_the_cpu_is_always_eager(model):
    prefill = CapturedPrefill(model)
    idx = torch.randint(0, model.cfg.vocab_size, (3, PROMPT))
    with torch.no_grad():
        for _ in range(3):
            cache, logits = prefill(idx)
            assert prefill.pending is None and prefill.graph is None
    torch.testing.assert_close(logits, model(idx).logits[:, -1], atol=1e-5, rtol=1e-5)
