"""The loss the LightningModule optimizes: LM loss plus each router loss times its config weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from morsearch.train.module import MoRLightningModule

from .helpers import steps_budget, tiny_mor

# weights far from the defaults and from each other, so a part with a wrong (or no) weight shows
CASES = {
    "expert_choice": {"router_aux": ("router_aux_loss_coeff", 0.3), "z_loss": ("router_z_loss_coeff", 0.7)},
    "token_choice": {"balancing": ("balancing_coeff", 0.4), "z_loss": ("router_z_loss_coeff", 0.9)},
}


@pytest.mark.parametrize("router", sorted(CASES))
def test_training_loss_is_lm_loss_plus_weighted_router_losses(router: str) -> None:
    parts = CASES[router]
    cfg = tiny_mor(router=router, **dict(parts.values()))
    module = MoRLightningModule(cfg, steps_budget(10), total_steps=10).train()
    batch = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # router logits are near 0 at init, and so is the z-loss; make them count
        for param in module.model.router.parameters():
            param.mul_(30.0)

    out = module.model(batch[:, :-1])  # the same weights and batch as the step below
    lm_loss = F.cross_entropy(out.logits.flatten(0, 1), batch[:, 1:].flatten())
    assert set(out.aux_losses) == set(parts)
    weighted = {name: coeff * out.aux_losses[name] for name, (_, coeff) in parts.items()}
    for name, value in weighted.items():
        assert value.item() > 1e-4, f"{name} too small to tell its weight apart"

    loss = module.training_step(batch, 0)  # what Lightning back-propagates
    assert loss.item() == pytest.approx((lm_loss + sum(weighted.values())).item(), rel=1e-6, abs=1e-7)
    assert module.last_loss.item() == pytest.approx(lm_loss.item(), rel=1e-6)  # the progress bar shows LM loss

    # doubling one weight adds exactly that part once more
    for name, (field, coeff) in parts.items():
        doubled = MoRLightningModule(cfg.model_copy(update={field: 2 * coeff}), steps_budget(10), total_steps=10)
        doubled.model.load_state_dict(module.model.state_dict())
        delta = doubled.train().training_step(batch, 0) - loss
        assert delta.item() == pytest.approx(weighted[name].item(), rel=1e-4, abs=1e-7), name
