"""measure(): every field is a measurement of the run, on trained modules and on configs."""

from __future__ import annotations

import gc
import statistics
import time

import pytest
import torch

from morsearch.config import DeploymentTarget, ModelConfig
from morsearch.errors import ConfigError
from morsearch.measure import Measurement, measure
from morsearch.model import build_model, decoding
from morsearch.model.decoders import DECODERS

TARGET = DeploymentTarget(device="cpu", dtype="float32", batch_size=3, prompt_len=6, new_tokens=8, repeats=3)


@pytest.fixture
def mor_config(tiny_model_config: ModelConfig) -> ModelConfig:
    return tiny_model_config.replace(router="expert_choice", max_seq_len=32)


def test_measure_a_config(mor_config: ModelConfig) -> None:
    m = measure(mor_config, TARGET)
    assert isinstance(m, Measurement)
    assert (m.batch_size, m.prompt_len, m.new_tokens, m.decoder) == (3, 6, 8, "lockstep")
    assert m.device.startswith("cpu")
    # the medians and spreads are those of the raw repeats
    assert len(m.decode_seconds) == len(m.prefill_seconds) == 3
    decoded = TARGET.batch_size * (TARGET.new_tokens - 1)
    assert m.decode_tokens_per_s == pytest.approx(decoded / statistics.median(m.decode_seconds))
    assert m.prefill_tokens_per_s == pytest.approx(3 * 6 / statistics.median(m.prefill_seconds))
    assert m.decode_cv == pytest.approx(statistics.stdev(m.decode_seconds) / statistics.fmean(m.decode_seconds))
    assert 0 < m.latency_p50_ms <= m.latency_p90_ms
    # each sequence emits new_tokens - 1 tokens after the prefill: the latency median is near decode/that
    per_token_ms = 1e3 * statistics.median(m.decode_seconds) / (TARGET.new_tokens - 1)
    assert m.latency_p50_ms < 5 * per_token_ms
    # memory: exact parameter bytes, the cache the decoder really held, weights + growth
    model = build_model(mor_config)
    assert m.param_bytes == sum(p.numel() * 4 for p in model.parameters())
    prompt = torch.zeros(3, 6, dtype=torch.long)
    assert m.kv_cache_bytes == DECODERS["lockstep"](model.eval()).generate(prompt, 8).cache_bytes > 0
    assert m.peak_memory_bytes == m.param_bytes + m.peak_growth_bytes
    assert len(m.step_token_fraction) == 2 and m.step_token_fraction[0] == 1.0
    assert m.to_dict()["step_token_fraction"] == list(m.step_token_fraction)


def test_only_the_timed_repeats_run_without_the_garbage_collector(mor_config: ModelConfig, monkeypatch) -> None:
    collecting: list[bool] = []

    class Recording(DECODERS["lockstep"]):
        def generate(self, *args, **kwargs):
            collecting.append(gc.isenabled())
            return super().generate(*args, **kwargs)

    monkeypatch.setitem(DECODERS, "recording", Recording)
    measure(mor_config, TARGET.model_copy(update={"warmup": 2}), decoder="recording")
    # two warm-ups and the monitored generation collect as usual; the three timed repeats do not
    assert collecting == [True, True, True, False, False, False]
    assert gc.isenabled()


def test_the_decoders_set_up_is_timed_as_neither_prefill_nor_decode(mor_config: ModelConfig, monkeypatch) -> None:
    adopt = decoding.RowCache.__init__

    def slow_set_up(self, *args: object) -> None:  # taking over the prefill's K/V, made slow
        time.sleep(0.5)
        adopt(self, *args)

    monkeypatch.setattr(decoding.RowCache, "__init__", slow_set_up)
    m = measure(mor_config, TARGET)  # prefill and decode take a few ms each here
    assert max(m.prefill_seconds) < 0.25 and max(m.decode_seconds) < 0.25


def test_measure_a_trained_module_leaves_it_untouched(mor_config: ModelConfig) -> None:
    model = build_model(mor_config)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure(model, TARGET.replace(dtype="bfloat16", repeats=1))
    assert m.dtype == "bfloat16"
    assert m.param_bytes == sum(p.numel() * 2 for p in model.parameters())
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trained_routers_decide_the_depths(mor_config: ModelConfig) -> None:
    model = build_model(mor_config).eval()
    with torch.no_grad():
        model.router.networks[1].weight.normal_(0.0, 1.0)  # a router with an opinion
    target = TARGET.replace(batch_size=8, new_tokens=12, repeats=1)
    generator = torch.Generator().manual_seed(0)  # the harness draws the prompt, then the continuation
    prompt = torch.randint(0, mor_config.vocab_size, (8, 6), generator=generator)
    continuation = torch.randint(0, mor_config.vocab_size, (8, 12), generator=generator)
    reference = DECODERS["reference"](model)  # the model's own forward
    for tokens, forced in (("greedy", None), ("random", continuation)):
        expected = reference.generate(prompt, 12, forced).step_tokens
        measured = measure(model, target.replace(decode_tokens=tokens), seed=0).step_token_fraction
        assert measured == tuple(n / (8 * 11) for n in expected)
    with torch.no_grad():
        model.router.networks[1].weight.zero_()  # logit 0 everywhere: the threshold stops every token
    assert measure(model, target).step_token_fraction == (1.0, 0.0)


def test_decoders_measure_the_same_workload(mor_config: ModelConfig) -> None:
    fast = [name for name in DECODERS if not name.endswith("_compiled")]  # compiling takes a minute (test_decoding)
    by_decoder = {name: measure(mor_config, TARGET.replace(repeats=1), decoder=name) for name in fast}
    fractions = {m.step_token_fraction for m in by_decoder.values()}
    assert len(fractions) == 1
    # the graphed decoders size their buffers once, for every new token (test_decoding.py)
    assert len({m.kv_cache_bytes for name, m in by_decoder.items() if not name.startswith("graphed")}) == 1


def test_target_errors_name_the_fix(mor_config: ModelConfig) -> None:
    with pytest.raises(ConfigError, match="max_seq_len"):
        measure(mor_config, TARGET.replace(prompt_len=30))
    with pytest.raises(ConfigError, match="decoder"):
        measure(mor_config, TARGET, decoder="fastest")
    with pytest.raises(ConfigError, match="new_tokens"):
        measure(mor_config, TARGET.replace(new_tokens=1))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: cpu"):
            measure(mor_config, TARGET.replace(device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_gpu_measurements_agree_within_3_percent(mor_config: ModelConfig) -> None:
    config = mor_config.replace(d_model=256, num_heads=4, num_kv_heads=2, ffn_dim=768, max_seq_len=512)
    target = DeploymentTarget(device="cuda", batch_size=32, prompt_len=256, new_tokens=128, repeats=5, warmup=2)
    first, second = measure(config, target), measure(config, target)

    def repeats_ms(m: Measurement, phase: str) -> str:  # shown on a failure: which repeats moved
        return " ".join(f"{1e3 * s:.2f}" for s in getattr(m, f"{phase}_seconds"))

    for phase in ("decode", "prefill"):
        rates = getattr(first, f"{phase}_tokens_per_s"), getattr(second, f"{phase}_tokens_per_s")
        shown = f"{phase} ms per repeat: [{repeats_ms(first, phase)}] then [{repeats_ms(second, phase)}]"
        assert abs(rates[0] / rates[1] - 1) < 0.03, shown
    assert first.peak_memory_bytes == second.peak_memory_bytes
