"""Every router option the config offers, on tiny shapes: it builds, trains, stays causal, decodes.

The shared contract of ``morsearch/model/routers.py`` run over each option (MOR.md section 2):

* training: forward + backward gives a finite loss and gradients that reach every router parameter;
* the auxiliary losses are the ones the options ask for, weighted by their coefficients;
* eval mode is causal: the logits at t do not change when tokens after t change;
* incremental decoding with the KV cache gives the full forward's logits;
* options that change the forward really do change it (they are not silently dropped).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from morsearch.config import ModelConfig
from morsearch.model import build_model

from .helpers import TINY_SHAPE, decode_incrementally, perturbed_pair

NR = 3
# Middle-Cycle 1 + 1x3 + 1: the paper's layout with routing over three recursion steps.
BASE = dict(**TINY_SHAPE, num_layers=2 + NR, num_recursions=NR, sharing="middle_cycle")

EXPERT_CHOICE_OPTIONS = {
    "linear": {},
    "mlp": dict(router_network="mlp"),
    "wide_mlp": dict(router_network="wide_mlp"),
    "sigmoid": dict(router_gate="sigmoid"),
    "tanh": dict(router_gate="tanh"),
    "alpha1": dict(router_alpha=1.0),
    "z_loss": dict(router_z_loss_coeff=0.01),
    "no_aux_loss": dict(router_aux_loss_coeff=0.0),
    "schedule_linear": dict(capacity_schedule="linear"),
    "schedule_geometric": dict(capacity_schedule="geometric"),
    "capacities": dict(capacities=(1.0, 0.5, 0.5)),
    "capacities_first_below_one": dict(capacities=(0.75, 0.5, 0.25)),  # the first step is routed too
}
TOKEN_CHOICE_OPTIONS = {
    "linear": {},
    "mlp": dict(router_network="mlp"),
    "wide_mlp": dict(router_network="wide_mlp"),
    "softmax": dict(router_gate="softmax"),
    "sigmoid": dict(router_gate="sigmoid", router_alpha=0.1),
    "z_loss": dict(router_z_loss_coeff=0.01),
    "balancing_loss": dict(balancing="loss", balancing_coeff=0.3),
    "loss_free": dict(balancing="loss_free", balancing_update_rate=0.01),
    "loss_free_z_loss": dict(balancing="loss_free", router_z_loss_coeff=0.01),
}


def _option_configs() -> dict[str, ModelConfig]:
    configs = {}
    for router, options in (("expert_choice", EXPERT_CHOICE_OPTIONS), ("token_choice", TOKEN_CHOICE_OPTIONS)):
        for name, option in options.items():
            for kv in ("recursion_wise", "recursive_sharing"):
                caps = option.get("capacities")
                if kv == "recursive_sharing" and caps is not None and caps[0] < 1:
                    continue  # refused by the config: recursive sharing needs every token at step 1
                configs[f"{router}-{name}-{kv}"] = ModelConfig(**BASE, router=router, kv_strategy=kv, **option)
    return configs


CONFIGS = _option_configs()
OPTION_IDS = sorted(CONFIGS)


def _eval_model(cfg: ModelConfig):
    """The built model in eval mode; a loss-free router gets a non-zero bias, as after training,
    so that the bias path (which shifts only the choice of depth) is exercised too. The untrained
    router's depth scores differ by ~1e-3, so this bias changes about a third of the choices
    while every depth stays in use."""
    model = build_model(cfg).eval()
    if cfg.router == "token_choice" and cfg.balancing == "loss_free":
        model.router.balance_bias.copy_(torch.tensor([5e-4, 0.0, -5e-4]))
    return model


def _train_forward(model, idx):
    out = model(idx[:, :-1])
    lm = F.cross_entropy(out.logits.flatten(0, 1), idx[:, 1:].flatten())
    return out, lm + out.aux_loss


@pytest.mark.parametrize("name", OPTION_IDS)
def test_option_trains_and_gradients_reach_the_router(name):
    cfg = CONFIGS[name]
    model = build_model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (4, 17))
    out, loss = _train_forward(model, idx)
    assert torch.isfinite(loss)
    loss.backward()
    router_params = dict(model.router.named_parameters())
    assert router_params, "every router option has learned parameters"
    for pname, p in router_params.items():
        assert p.grad is not None, f"no gradient reached router parameter {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"router parameter {pname} got an all-zero gradient"
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.layers.parameters())
    # one optimizer step later the model still gives finite outputs (loss-free bias updated too)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.after_optimizer_step()
    if cfg.router == "token_choice" and cfg.balancing == "loss_free":
        assert model.router.balance_bias.any(), "the loss-free bias moves after an optimizer step"
    assert torch.isfinite(_train_forward(model, idx)[1])


def _expected_aux_coefficients(cfg: ModelConfig) -> dict[str, float]:
    """The auxiliary losses a training forward must report, with the weight each gets."""
    expected = {}
    if cfg.router == "expert_choice" and min(cfg.step_capacities) < 1:
        expected["router_aux"] = cfg.router_aux_loss_coeff
    if cfg.router == "token_choice" and cfg.balancing == "loss":
        expected["balancing"] = cfg.balancing_coeff
    if cfg.router_z_loss_coeff > 0:
        expected["z_loss"] = cfg.router_z_loss_coeff
    return expected


@pytest.mark.parametrize("name", [n for n in OPTION_IDS if n.endswith("recursion_wise")])
def test_aux_losses_are_the_ones_the_options_ask_for(name):
    cfg = CONFIGS[name]
    model = build_model(cfg).train()
    out = model(torch.randint(0, cfg.vocab_size, (2, 16)))
    expected = _expected_aux_coefficients(cfg)
    assert set(out.aux_losses) == set(expected)
    for loss in out.aux_losses.values():
        assert loss.requires_grad and torch.isfinite(loss) and loss > 0
    weighted = sum((coeff * out.aux_losses[key] for key, coeff in expected.items()), torch.zeros(()))
    torch.testing.assert_close(out.aux_loss, weighted)
    # the aux losses are training signals: an eval forward reports none
    with torch.no_grad():
        assert build_model(cfg).eval()(torch.randint(0, cfg.vocab_size, (2, 16))).aux_losses == {}


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_z_loss_appears_only_with_a_positive_coefficient(router):
    cfg = ModelConfig(**BASE, router=router)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    assert "z_loss" not in build_model(cfg).train()(idx).aux_losses
    with_z = cfg.replace(router_z_loss_coeff=0.5)
    torch.manual_seed(1)
    off = build_model(cfg.replace(router_z_loss_coeff=0.0)).train()(idx)
    torch.manual_seed(1)
    on = build_model(with_z).train()(idx)
    assert "z_loss" in on.aux_losses and on.aux_losses["z_loss"] > 0
    # same weights, same forward: the z-loss adds exactly coeff x z to the weighted aux loss
    torch.testing.assert_close(on.logits, off.logits)
    torch.testing.assert_close(on.aux_loss, off.aux_loss + 0.5 * on.aux_losses["z_loss"])


@pytest.mark.parametrize("name", OPTION_IDS)
def test_eval_mode_is_causal(name):
    cfg = CONFIGS[name]
    model = _eval_model(cfg)
    cut = 11
    idx, changed = perturbed_pair(cfg, 20, cut)
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, : cut + 1], b[:, : cut + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, cut + 1 :], b[:, cut + 1 :])


@pytest.mark.parametrize("name", OPTION_IDS)
def test_incremental_decoding_matches_the_full_forward(name):
    cfg = CONFIGS[name]
    model = _eval_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 16))
    with torch.no_grad():
        full = model(idx).logits
        _, outputs = decode_incrementally(model, idx, prompt=9)
    # float32, only the summation order differs (as in test_kv_cache.py)
    torch.testing.assert_close(torch.cat([o.logits for o in outputs], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "router, base, option, mode",
    [
        pytest.param("expert_choice", {}, dict(router_gate="tanh"), "eval", id="ec-tanh"),
        pytest.param("expert_choice", {}, dict(router_alpha=1.0), "eval", id="ec-alpha"),
        pytest.param(
            "expert_choice",
            dict(router_gate="tanh"),
            dict(router_gate="tanh", router_alpha=0.3),
            "eval",
            id="ec-tanh-alpha",
        ),
        # eval thresholds every routed step at 0, so the capacities act in training (top-k) only
        pytest.param("expert_choice", {}, dict(capacity_schedule="geometric"), "train", id="ec-geometric"),
        pytest.param("expert_choice", {}, dict(capacities=(1.0, 0.5, 0.5)), "train", id="ec-capacities"),
        pytest.param("token_choice", {}, dict(router_gate="sigmoid"), "eval", id="tc-sigmoid"),
        pytest.param("token_choice", {}, dict(router_alpha=0.5), "eval", id="tc-alpha"),
        pytest.param(
            "token_choice",
            dict(router_gate="sigmoid"),
            dict(router_gate="sigmoid", router_alpha=0.3),
            "eval",
            id="tc-sigmoid-alpha",
        ),
    ],
)
def test_forward_options_change_the_output(router, base, option, mode):
    """Same weights, one option changed: the logits differ, so the option reaches the model."""
    default = build_model(ModelConfig(**BASE, router=router, **base))
    variant = build_model(ModelConfig(**BASE, router=router, **option))
    variant.load_state_dict(default.state_dict())
    idx = torch.randint(0, default.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        a, b = default.train(mode == "train")(idx).logits, variant.train(mode == "train")(idx).logits
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
@pytest.mark.parametrize("network, hidden", [("linear", 0), ("mlp", 2), ("wide_mlp", 4)])
def test_router_network_has_the_named_shape(router, network, hidden):
    """linear: d -> out; mlp: d -> 2d -> out; wide_mlp: d -> 4d -> out (MOR.md 2.3)."""
    model = build_model(ModelConfig(**BASE, router=router, router_network=network))
    outputs = 1 if router == "expert_choice" else NR
    d = BASE["d_model"]
    expected = [(outputs, d)] if hidden == 0 else [(hidden * d, d), (outputs, hidden * d)]
    nets = model.router.networks if router == "expert_choice" else [model.router.network]
    assert len(nets) == (NR if router == "expert_choice" else 1)
    for net in nets:
        assert [tuple(p.shape) for p in net.parameters()] == expected
