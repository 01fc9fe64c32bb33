"""Behaviour 4: incremental decoding with the KV cache gives the full forward's logits, and the
cache holds exactly the bytes the accounting predicts."""

from __future__ import annotations

import pytest
import torch

from morsearch.model import build_model, sizing
from morsearch.model.sharing import layer_schedule

from .helpers import config_id, decode_incrementally, tiny, valid_configs

PROMPT, TOTAL = 9, 16
TOLERANCE = dict(atol=1e-5, rtol=1e-5)  # float32: only summation order differs


def _decode(model, idx, chunk_tokens=256):
    return decode_incrementally(model, idx, PROMPT, chunk_tokens)


@pytest.mark.parametrize("cfg", valid_configs(), ids=config_id)
def test_incremental_decoding_matches_full_forward(cfg):
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (3, TOTAL))
    with torch.no_grad():
        full = model(idx).logits
        _, outputs = _decode(model, idx)
    torch.testing.assert_close(torch.cat([o.logits for o in outputs], dim=1), full, **TOLERANCE)


@pytest.mark.parametrize("cfg", valid_configs(), ids=config_id)
def test_cache_allocates_what_the_accounting_predicts(cfg):
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, TOTAL))
    with torch.no_grad():
        cache, outputs = _decode(model, idx, chunk_tokens=1)
    # tokens that ran each recursion step, summed over the prefill and every decode step
    steps = layer_schedule(cfg).num_block_steps
    step_tokens = [0.0] * max(cfg.num_recursions, 1)
    for out in outputs:
        tokens_in_call = out.logits.shape[1]
        for step in range(steps):
            step_tokens[step] += float(out.step_token_fraction[step]) * tokens_in_call
    expected = sizing.kv_cache_bytes(cfg, TOTAL, step_tokens, dtype_bytes=4)
    assert cache.allocated_bytes() == pytest.approx(expected)
    if cfg.router == "none":  # every token at every step: exactly bytes-per-token x tokens
        assert cache.allocated_bytes() == sizing.kv_bytes_per_token(cfg, dtype_bytes=4) * TOTAL


def test_recursive_sharing_caches_less_than_recursion_wise():
    wise = tiny("middle_cycle", "expert_choice", "recursion_wise", 3)
    shared = wise.replace(kv_strategy="recursive_sharing")
    assert sizing.kv_bytes_per_token(shared) < sizing.kv_bytes_per_token(wise)
    vanilla = tiny("none", "none", "recursion_wise", 1, shared_layers=wise.num_layers)
    # the paper's Tab. 2 ratios over the recursion block: (Nr+1)/(2Nr) and 1/Nr
    block = wise.num_shared_layers * 3
    per_slot = sizing.kv_bytes_per_token_per_slot(wise)
    assert sizing.kv_bytes_per_token(wise) - 2 * per_slot == pytest.approx(per_slot * block * (3 + 1) / (2 * 3))
    assert sizing.kv_bytes_per_token(shared) - 2 * per_slot == pytest.approx(per_slot * block / 3)
    assert sizing.kv_bytes_per_token(vanilla) == per_slot * wise.num_layers


def test_chunked_cache_grows_in_chunks():
    cfg = tiny("cycle", "none", "recursion_wise", 2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        cache, _ = _decode(model, torch.randint(0, cfg.vocab_size, (2, TOTAL)), chunk_tokens=8)
    per_slot = sizing.kv_bytes_per_token_per_slot(cfg, dtype_bytes=4)
    assert cache.allocated_bytes() == len(cache.slots) * 2 * 16 * per_slot  # 2 rows x 16 tokens, 2 chunks


def test_writes_of_every_token_never_read_lengths_back(monkeypatch):
    """An unrouted model's cached decode is all slices: no device-to-host sync sizes or scatters it."""
    cfg = tiny("cycle", "none", "recursion_wise", 2)
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, TOTAL))

    def sync(*args, **kwargs):
        raise AssertionError("the cache read a tensor back to the host")

    with monkeypatch.context() as patched:
        for name in ("__int__", "item", "tolist", "nonzero"):
            patched.setattr(torch.Tensor, name, sync)
        with torch.no_grad():
            cache, _ = _decode(model, idx)
    for slot in cache.slots.values():
        assert slot.uniform_length == TOTAL
        assert slot.lengths.tolist() == [TOTAL, TOTAL]
    # a write that skips a token leaves the slices behind: lengths now differ by row
    slot = next(iter(cache.slots.values()))
    k = torch.zeros(2, cfg.kv_heads, 1, cfg.head_dim)
    slot.append(k, k, torch.full((2, 1), TOTAL), torch.tensor([[True], [False]]))
    assert slot.uniform_length is None and slot.lengths.tolist() == [TOTAL + 1, TOTAL]
    keys, _, positions, valid = slot.view()
    assert keys.shape[2] == TOTAL + 1 and valid.sum(dim=1).tolist() == [TOTAL + 1, TOTAL]
    assert positions[0, TOTAL] == TOTAL


@pytest.mark.parametrize("kv_strategy", ["recursion_wise", "recursive_sharing"])
@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_a_routed_prefill_reads_back_only_each_routed_steps_width(monkeypatch, router, kv_strategy):
    """Into an empty cache every write is a slice and every read knows its length: the one
    read-back per routed step is ``compact`` learning how many tokens go on (fails with
    the old cache, which read lengths back for each layer's write and read)."""
    cfg = tiny("middle_cycle", router, kv_strategy, 3, shared_layers=2)
    model = build_model(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (3, PROMPT))
    routed_steps = sum(capacity < 1 for capacity in cfg.step_capacities) if router == "expert_choice" else 2
    read_backs = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            read_backs.append(name)
            return original(self, *args, **kwargs)

        return read

    with torch.no_grad():
        model(idx)  # warm: nothing lazy is left for the counted call
        cache = model.new_cache(3)
        with monkeypatch.context() as patched:
            for name in ("__int__", "__bool__", "item", "tolist", "nonzero"):
                patched.setattr(torch.Tensor, name, counted(name))
            prefill = model(idx, cache=cache).logits
        full = model(idx).logits
    assert routed_steps >= 1 and read_backs == ["__int__"] * routed_steps
    torch.testing.assert_close(prefill, full, **TOLERANCE)
    for slot in cache.slots.values():  # what each slot holds is what its writes said it holds
        assert slot.longest == int(slot.lengths.max())


def test_a_step_no_token_takes_is_skipped_with_every_deeper_one():
    cfg = tiny("cycle", "expert_choice", "recursion_wise", 3)
    model = build_model(cfg).eval()
    torch.nn.init.constant_(model.router.networks[1].weight, 0.0)  # logit 0: step 1 keeps nobody
    calls = []
    model.layers[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    idx = torch.randint(0, cfg.vocab_size, (2, PROMPT))
    with torch.no_grad():
        cache = model.new_cache(2)
        out = model(idx, cache=cache)
    assert calls == [PROMPT]  # step 0 only: steps 1 and 2 never run the block
    assert out.step_token_fraction.tolist() == [1.0, 0.0, 0.0]
    assert [cache.slots[(0, step)].allocated_bytes() for step in (1, 2)] == [0, 0]
