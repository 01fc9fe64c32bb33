"""Behaviour 6: shared weights stay tied at every recursion step, the sharing maps follow the
paper, and the routers follow the paper's algebra."""

from __future__ import annotations

import copy

import pytest
import torch

from morsearch.config import ModelConfig
from morsearch.model import ROUTERS, SHARING_STRATEGIES, build_model, layer_schedule
from morsearch.model.kv_cache import KV_STRATEGIES

from .helpers import TINY_SHAPE, tiny


def test_registries_match_the_config_literals():
    fields = ModelConfig.model_fields
    assert set(fields["sharing"].annotation.__args__) == set(SHARING_STRATEGIES)
    assert set(fields["router"].annotation.__args__) == set(ROUTERS)
    assert set(fields["kv_strategy"].annotation.__args__) == set(KV_STRATEGIES)


def test_paper_layer_to_step_mappings():
    # 360M, L=32, Nr=3 Middle-Cycle: layer 0 | rec 1..3 = shared layers 1..10 | layer 11 (MOR.md 1.1)
    cfg = ModelConfig(**TINY_SHAPE, num_layers=32, num_recursions=3, sharing="middle_cycle")
    assert [layer for layer, _ in layer_schedule(cfg).applications()] == [0, *list(range(1, 11)) * 3, 11]
    unrolled = {
        "cycle": [0, 1, 2, 0, 1, 2, 0, 1, 2],  # Phi'[l mod (L/Nr)]
        "sequence": [0, 0, 0, 1, 1, 1, 2, 2, 2],  # Phi'[floor(l/Nr)]
    }
    for sharing, expected in unrolled.items():
        cfg = ModelConfig(**TINY_SHAPE, num_layers=9, num_recursions=3, sharing=sharing)
        assert [layer for layer, _ in layer_schedule(cfg).applications()] == expected
    cfg = ModelConfig(**TINY_SHAPE, num_layers=8, num_recursions=3, sharing="middle_sequence")
    assert [layer for layer, _ in layer_schedule(cfg).applications()] == [0, 1, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize("sharing", ["cycle", "sequence", "middle_cycle", "middle_sequence"])
def test_shared_recursion_equals_the_explicitly_unrolled_model(sharing):
    cfg = tiny(sharing, "none", "recursion_wise", 3, shared_layers=2)
    shared = build_model(cfg).eval()
    vanilla_cfg = cfg.replace(sharing="none", num_recursions=1)
    vanilla = build_model(vanilla_cfg).eval()
    vanilla.embed.load_state_dict(shared.embed.state_dict())
    vanilla.norm.load_state_dict(shared.norm.state_dict())
    for position, (layer, _) in enumerate(layer_schedule(cfg).applications()):
        vanilla.layers[position].load_state_dict(shared.layers[layer].state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(shared(idx).logits, vanilla(idx).logits)


@pytest.mark.parametrize("router", ["none", "expert_choice", "token_choice"])
def test_every_recursion_step_runs_the_same_parameter_storage(router):
    cfg = tiny("middle_cycle", router, "recursion_wise", 3, shared_layers=2)
    model = copy.deepcopy(build_model(cfg))  # module surgery such as deepcopy must not untie
    model.train()
    seen: dict[int, list[tuple[int, ...]]] = {}
    for index in layer_schedule(cfg).block:
        layer = model.layers[index]

        def record(module, args, out, index=index):
            pointers = tuple(p.data_ptr() for p in module.parameters())
            seen.setdefault(index, []).append(pointers)

        layer.register_forward_hook(record)
    model(torch.randint(0, cfg.vocab_size, (2, 12)))
    for index, pointers in seen.items():
        assert len(pointers) == 3, "each shared layer runs once per recursion step"
        assert len(set(pointers)) == 1, f"layer {index} used different storage at different steps"
    # and gradients from all steps accumulate into that one storage
    assert sum(p.numel() for p in model.parameters()) == cfg.unique_parameters()


def test_expert_choice_update_is_h_plus_alpha_gate_block():
    cfg = ModelConfig(
        **TINY_SHAPE, num_layers=2, num_recursions=2, sharing="cycle", router="expert_choice",
        capacities=(1.0, 1.0), router_alpha=0.3,
    )
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        h = model.embed(idx)
        positions = torch.arange(10).expand(2, 10)
        from morsearch.model.layers import AttentionContext

        for step in range(2):
            gate = 0.3 * torch.sigmoid(model.router.networks[step](h))
            h = h + gate * model.layers[0](h, model.rope(positions), AttentionContext(positions))
        expected = torch.nn.functional.linear(model.norm(h), model.embed.weight)
        torch.testing.assert_close(model(idx).logits, expected)


def test_token_choice_final_step_is_first_input_plus_gated_block():
    cfg = ModelConfig(**TINY_SHAPE, num_layers=1, num_recursions=1, sharing="cycle", router="token_choice")
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        h = model.embed(idx)
        positions = torch.arange(10).expand(2, 10)
        from morsearch.model.layers import AttentionContext

        gate = model.router.network(h).softmax(-1)  # one depth: probability 1, alpha 1
        h = h + gate * model.layers[0](h, model.rope(positions), AttentionContext(positions))
        expected = torch.nn.functional.linear(model.norm(h), model.embed.weight)
        torch.testing.assert_close(model(idx).logits, expected)


def test_loss_free_bias_moves_toward_balance():
    cfg = ModelConfig(
        **TINY_SHAPE, num_layers=3, num_recursions=3, sharing="cycle", router="token_choice",
        balancing="loss_free", balancing_update_rate=0.01,
    )
    model = build_model(cfg).train()
    model(torch.randint(0, cfg.vocab_size, (2, 16)))
    load = model.router.load_since_update.clone()
    model.after_optimizer_step()
    bias = model.router.balance_bias
    assert torch.equal(bias, 0.01 * torch.sign(load.mean() - load))
    assert not model.router.load_since_update.any()
