"""The row-gathering decoders give the reference decoder's outputs and skip real work."""

from __future__ import annotations

import pytest
import torch

from morsearch.config import ModelConfig
from morsearch.model import ROUTERS, build_model
from morsearch.model.decoding import DECODE_RULES, DECODERS, Generation

ROUTED = [
    {"router": router, "kv_strategy": kv}
    for router in ("none", "expert_choice", "token_choice")
    for kv in ("recursion_wise", "recursive_sharing")
]
UNROUTED = [{"sharing": "none", "num_layers": 3, "num_recursions": 1}, {"sharing": "sequence"}]
B, P, N = 5, 6, 12


def _model(tiny_model_config: ModelConfig, **changes: object) -> torch.nn.Module:
    fields = {"num_layers": 8, "num_recursions": 3, "sharing": "middle_cycle", "max_seq_len": 32, **changes}
    if fields["sharing"] == "sequence":
        fields["num_layers"] = 6
    model = build_model(tiny_model_config.replace(**fields)).eval()
    with torch.no_grad():  # sharpen the random routers so that tokens really stop at different depths
        for name, parameter in model.router.named_parameters():
            if "network" in name:
                parameter.mul_(40)
    return model


def _generate(model: torch.nn.Module, name: str, forced: torch.Tensor | None = None) -> Generation:
    prompt = torch.randint(0, model.cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(1))
    return DECODERS[name](model).generate(prompt, N, forced=forced, keep_logits=True)


def test_decode_rules_cover_every_router() -> None:
    assert set(DECODE_RULES) == set(ROUTERS)


@pytest.mark.parametrize("changes", ROUTED + UNROUTED, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("decoder", [name for name in DECODERS if name != "reference"])
def test_same_outputs_as_the_reference(tiny_model_config: ModelConfig, changes: dict, decoder: str) -> None:
    model = _model(tiny_model_config, **changes)
    forced = torch.randint(0, model.cfg.vocab_size, (B, N))
    reference = _generate(model, "reference", forced)
    fast = _generate(model, decoder, forced)
    assert fast.logits is not None and reference.logits is not None
    torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-5)
    assert fast.step_tokens == reference.step_tokens
    assert fast.cache_bytes == reference.cache_bytes
    # greedy decoding: the same tokens
    assert torch.equal(_generate(model, decoder).tokens, _generate(model, "reference").tokens)


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_stopped_tokens_do_no_block_work(tiny_model_config: ModelConfig, router: str) -> None:
    model = _model(tiny_model_config, router=router)
    shared_mlp = model.layers[1].mlp  # a layer of the recursion block
    rows = []
    hook = shared_mlp.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0] * args[0].shape[1]))
    try:
        prompt = torch.randint(0, model.cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            model(prompt, cache=model.new_cache(B))  # the prefill both decoders start with
        prefill_rows, rows[:] = sum(rows), []
        _generate(model, "reference")
        reference_rows, rows[:] = sum(rows), []
        fast = _generate(model, "depthwise")
        fast_rows = sum(rows)
    finally:
        hook.remove()
    assert sum(fast.step_tokens) < B * (N - 1) * 3, "the routers stopped no token early; test is void"
    assert fast_rows - prefill_rows == sum(fast.step_tokens)  # exactly the active (token, step) pairs
    assert reference_rows - prefill_rows == B * (N - 1) * 3 > fast_rows - prefill_rows


def test_depthwise_batching_mixes_steps_in_fewer_block_calls(tiny_model_config: ModelConfig) -> None:
    model = _model(tiny_model_config, router="expert_choice")
    forced = torch.randint(0, model.cfg.vocab_size, (B, N))  # varied tokens, so varied depths per sequence
    lockstep, depthwise = _generate(model, "lockstep", forced), _generate(model, "depthwise", forced)
    assert lockstep.step_tokens == depthwise.step_tokens
    # lockstep pays one call per step reached by any sequence; depth-wise batching
    # refills the slots of stopped tokens with other sequences' next tokens
    assert depthwise.block_calls < lockstep.block_calls


def test_recursive_sharing_caches_fewer_bytes(tiny_model_config: ModelConfig) -> None:
    caching = _generate(_model(tiny_model_config, router="expert_choice"), "depthwise")
    sharing = _generate(_model(tiny_model_config, router="expert_choice", kv_strategy="recursive_sharing"), "depthwise")
    assert sharing.cache_bytes < caching.cache_bytes
