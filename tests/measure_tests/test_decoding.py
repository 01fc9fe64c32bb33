"""The row-gathering decoders give the reference decoder's outputs and skip real work."""

from __future__ import annotations

import pytest
import torch

from morsearch.config import ModelConfig
from morsearch.model import ROUTERS, build_model
from morsearch.model.decoders import DECODERS
from morsearch.model.decoding import DECODE_RULES, Generation
from morsearch.model.graphed import bucket_sizes

ROUTED = [
    {"router": router, "kv_strategy": kv}
    for router in ("none", "expert_choice", "token_choice")
    for kv in ("recursion_wise", "recursive_sharing")
]
UNROUTED = [{"sharing": "none", "num_layers": 3, "num_recursions": 1}, {"sharing": "sequence"}]
COMPILED = [name for name in DECODERS if name.endswith("_compiled")]
FAST = [name for name in DECODERS if name not in ("reference", *COMPILED)]  # compiling takes a minute
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
@pytest.mark.parametrize("decoder", FAST)
def test_same_outputs_as_the_reference(tiny_model_config: ModelConfig, changes: dict, decoder: str) -> None:
    model = _model(tiny_model_config, **changes)
    forced = torch.randint(0, model.cfg.vocab_size, (B, N))
    reference = _generate(model, "reference", forced)
    fast = _generate(model, decoder, forced)
    assert fast.logits is not None and reference.logits is not None
    torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-5)
    assert fast.step_tokens == reference.step_tokens
    if not decoder.startswith("graphed"):  # graphed decoders allocate their buffers at the final size
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


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_graphed_depthwise_runs_every_depth_in_one_block_call(tiny_model_config: ModelConfig, router: str) -> None:
    model = _model(tiny_model_config, router=router)
    forced = torch.randint(0, model.cfg.vocab_size, (B, N))
    graphed, depthwise = _generate(model, "graphed", forced), _generate(model, "graphed_depthwise", forced)
    assert graphed.step_tokens == depthwise.step_tokens
    # one call per iteration over every row: as many calls as the deepest sequence's steps
    assert depthwise.block_calls < graphed.block_calls
    # every row emits each of its N tokens exactly once, the first one at the prefill
    emitted = [row for rows in depthwise.emissions for row in rows]
    assert depthwise.emissions[0] == list(range(B)) and sorted(emitted) == sorted(list(range(B)) * N)
    assert len(depthwise.emissions) == depthwise.block_calls + 1


def test_recursive_sharing_caches_fewer_bytes(tiny_model_config: ModelConfig) -> None:
    caching = _generate(_model(tiny_model_config, router="expert_choice"), "depthwise")
    sharing = _generate(_model(tiny_model_config, router="expert_choice", kv_strategy="recursive_sharing"), "depthwise")
    assert sharing.cache_bytes < caching.cache_bytes


def test_graphed_buckets_cover_every_row_count() -> None:
    for batch in (1, 5, 32, 256):
        sizes = bucket_sizes(batch)
        assert sizes[0] == 1 and sizes[-1] == batch and sizes == sorted(set(sizes))
        assert all(next(s for s in sizes if s >= count) < 2 * count for count in range(1, batch + 1))
    assert bucket_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256]


@pytest.mark.parametrize("name", ["graphed", "graphed_depthwise"])
def test_graphed_reuses_its_buffers_across_generations(tiny_model_config: ModelConfig, name: str) -> None:
    model = _model(tiny_model_config, router="expert_choice")
    decoder = DECODERS[name](model)
    for length in (P, P, P + 3):  # the same layout twice (buffers reused), then another (rebuilt)
        prompt = torch.randint(0, model.cfg.vocab_size, (B, length), generator=torch.Generator().manual_seed(length))
        fast = decoder.generate(prompt, N, keep_logits=True)
        reference = DECODERS["reference"](model).generate(prompt, N, keep_logits=True)
        assert fast.logits is not None and reference.logits is not None
        torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-5)
        assert fast.step_tokens == reference.step_tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_compiled_graphed_gives_the_reference_outputs(tiny_model_config: ModelConfig, router: str, name: str) -> None:
    model = _model(tiny_model_config, router=router)
    forced = torch.randint(0, model.cfg.vocab_size, (B, N))
    reference, fast = _generate(model, "reference", forced), _generate(model, name, forced)
    assert fast.logits is not None and reference.logits is not None
    torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-5)
    assert fast.step_tokens == reference.step_tokens


def test_graphed_cache_holds_the_prefill_and_every_new_token(tiny_model_config: ModelConfig) -> None:
    model = _model(tiny_model_config, router="expert_choice")
    prompt = torch.randint(0, model.cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache(B)
        model(prompt, cache=cache)
    cfg, width = model.cfg, model.embed.weight.element_size()
    # per slot: B rows and the scratch row, room for the longest row's prefill entries and N - 1 more
    expected = sum(
        2 * (B + 1) * cfg.kv_heads * cfg.head_dim * width * (int(slot.lengths.max()) + N - 1)
        for slot in cache.slots.values()
    )
    assert DECODERS["graphed"](model).generate(prompt, N).cache_bytes == expected
    # graphed_depthwise: B rows; a layer's steps side by side, each with a dump entry, in multiples of 8
    entries: dict[int, int] = {}
    for (layer, _), slot in cache.slots.items():
        entries[layer] = entries.get(layer, 0) + int(slot.lengths.max()) + N - 1 + 1
    expected = sum(2 * B * cfg.kv_heads * cfg.head_dim * width * (-(-n // 8) * 8) for n in entries.values())
    assert DECODERS["graphed_depthwise"](model).generate(prompt, N).cache_bytes == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("changes", ROUTED + UNROUTED[:1], ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("name", ["graphed", "graphed_depthwise"])
def test_graphed_replays_equal_the_reference_on_the_gpu(
    tiny_model_config: ModelConfig, changes: dict, name: str
) -> None:
    model = _model(tiny_model_config, **changes).cuda()
    prompt = torch.randint(0, model.cfg.vocab_size, (B, P), device="cuda")
    forced = torch.randint(0, model.cfg.vocab_size, (B, N), device="cuda")
    decoder = DECODERS[name](model)
    # the first generation captures the decode graphs, the second the prefill's; then replays.
    # The last prompt is new: its prefill replays if it routes like the first, else runs eagerly.
    other = torch.randint(0, model.cfg.vocab_size, (B, P), device="cuda")
    for generation, tokens in enumerate((prompt, prompt, prompt, other)):
        reference = DECODERS["reference"](model).generate(tokens, N, forced=forced, keep_logits=True)
        fast = decoder.generate(tokens, N, forced=forced, keep_logits=True)
        assert fast.logits is not None and reference.logits is not None
        torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-4)
        assert fast.step_tokens == reference.step_tokens
        assert (decoder.prefill.graph is not None) == (generation >= 1)
    assert decoder.workload is not None and decoder.workload.graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_graphed_replays_equal_the_reference_on_the_gpu(tiny_model_config: ModelConfig, name: str) -> None:
    model = _model(tiny_model_config, router="expert_choice").cuda()
    prompt = torch.randint(0, model.cfg.vocab_size, (B, P), device="cuda")
    forced = torch.randint(0, model.cfg.vocab_size, (B, N), device="cuda")
    reference = DECODERS["reference"](model).generate(prompt, N, forced=forced, keep_logits=True)
    decoder = DECODERS[name](model)
    for _ in range(2):
        fast = decoder.generate(prompt, N, forced=forced, keep_logits=True)
        assert fast.logits is not None and reference.logits is not None
        torch.testing.assert_close(fast.logits, reference.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decoder", FAST + ["reference"])
def test_the_prefill_is_marked_once_before_every_iteration(tiny_model_config: ModelConfig, decoder: str) -> None:
    model = _model(tiny_model_config, router="expert_choice")
    prompt = torch.randint(0, model.cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(1))
    calls: list[str] = []
    generation = DECODERS[decoder](model).generate(
        prompt, N, on_iteration=lambda: calls.append("iteration"), on_prefill=lambda: calls.append("prefill")
    )
    assert calls == ["prefill"] + ["iteration"] * len(generation.emissions)
