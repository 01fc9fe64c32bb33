"""``measure(model_or_config, target)``: run a model on its deployment target and time it.

One measurement = warm-up generations (kernels, allocator, caches), one
generation under a peak-memory monitor, then ``target.repeats`` timed generations
(garbage collected before them, the collector paused during them; on the GPU two
untimed ones first, in which the measured decoder captures its prefill graph).
Each generation prefills ``prompt_len`` random tokens for ``batch_size`` sequences
and decodes until each has ``new_tokens`` new tokens (a fixed random continuation,
or greedy: ``target.decode_tokens``), with the decoder that serves MoR fastest on
the device (``default_decoder``: CUDA graphs on the GPU, row gathering on the CPU).
The prefill is timed up to the end of the prompt's forward (from when its work is
queued, for a graph replay: ``Clock``'s ``queue_ahead``), the decode from the
first token on: the decoder's set-up between them (copying the prefill's K/V into
its own buffers, work a serving engine that writes its cache in place does not do)
counts in neither.
The model's routers make the real per-token decisions, so a trained model's depth
statistics and a random one's differ, and both are measured as they are.

Reported: medians over the repeats, their coefficient of variation, and per-token
latency percentiles pooled over the repeats.
"""

from __future__ import annotations

import copy
import platform
import statistics
import sys
from importlib import metadata

import torch
from torch import nn

from morsearch.config import DeploymentTarget, ModelConfig
from morsearch.errors import ConfigError
from morsearch.measure.memory import PeakMemory
from morsearch.measure.results import Measurement
from morsearch.measure.timing import (
    Clock,
    coefficient_of_variation,
    collector_paused,
    inter_token_latencies,
    percentile,
)
from morsearch.model import MoRModel, build_model
from morsearch.model.decoders import DECODERS
from morsearch.model.graphed import CapturedPrefill

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(target: DeploymentTarget) -> torch.device:
    """The device named by the target (``auto``: CUDA when visible, else CPU)."""
    if target.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "target.device='cuda' but no CUDA device is visible to torch; "
            "use device: cpu (or auto), or run on a machine with a GPU"
        )
    return torch.device(target.device)


def describe_device(device: torch.device) -> str:
    """A short human label of the hardware that measured."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine() or 'unknown'}, {torch.get_num_threads()} threads"


def library_versions() -> dict[str, str]:
    try:
        morsearch_version = metadata.version("morsearch")
    except metadata.PackageNotFoundError:
        morsearch_version = "unknown"
    versions = {"morsearch": morsearch_version, "torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


def prepare_model(model_or_config: MoRModel | ModelConfig, device: torch.device, dtype: torch.dtype) -> MoRModel:
    """The model to measure, on ``device`` in ``dtype``, in eval mode.

    A config is built with random weights (seeded by the caller). A trained module
    is copied when it must change device or dtype, so the caller's model is untouched.
    """
    if isinstance(model_or_config, ModelConfig):
        return build_model(model_or_config, device=device, dtype=dtype).eval()
    if not isinstance(model_or_config, MoRModel):
        raise ConfigError(f"measure() takes a MoRModel or a ModelConfig, got {type(model_or_config).__name__}")
    first = next(model_or_config.parameters())
    if first.device == device and first.dtype == dtype and not model_or_config.training:
        return model_or_config
    return copy.deepcopy(model_or_config).to(device=device, dtype=dtype).eval()


def default_decoder(device: torch.device) -> str:
    """The decoder that serves MoR fastest on ``device`` (docs/DECODING.md has the measurements).

    On the GPU eager decoding is bound by kernel launches, which ``graphed`` replays as
    CUDA graphs; on the CPU there are no launches to save and ``lockstep`` pads nothing.
    """
    return "graphed" if device.type == "cuda" else "lockstep"


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters (``parameters()`` yields a tied tensor once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure(
    model_or_config: MoRModel | ModelConfig,
    target: DeploymentTarget,
    *,
    decoder: str | None = None,
    seed: int = 0,
) -> Measurement:
    """Measure memory and throughput of a model generating on ``target``.

    Args:
        model_or_config: A (trained) ``MoRModel``, or a ``ModelConfig`` to build with
            random weights for a quick look without training.
        target: Device, dtype, batch size, prompt and generation lengths, repeats.
        decoder: A key of ``morsearch.model.decoders.DECODERS``; by default the fastest
            on the target's device (``default_decoder``).
        seed: Seeds the random weights (for a config) and the random prompt.

    Returns:
        The ``Measurement``.

    Raises:
        ConfigError: The target does not fit the model (sequence too long, no CUDA
            device, unknown decoder).
        torch.OutOfMemoryError: The workload does not fit the device.
    """
    device, dtype = resolve_device(target), TORCH_DTYPES[target.dtype]
    decoder = decoder or default_decoder(device)
    if decoder not in DECODERS:
        raise ConfigError(f"decoder={decoder!r} is unknown; choose one of {', '.join(DECODERS)}")
    if target.new_tokens < 2:
        raise ConfigError("target.new_tokens must be at least 2: the first token comes from the prefill")
    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else model_or_config.cfg
    if target.total_len > cfg.max_seq_len:
        raise ConfigError(
            f"target prompt_len + new_tokens = {target.total_len} exceeds the model's "
            f"max_seq_len={cfg.max_seq_len}; shorten the target or raise max_seq_len"
        )
    torch.manual_seed(seed)
    model = prepare_model(model_or_config, device, dtype)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (target.batch_size, target.prompt_len), generator=generator)
    prompt = prompt.to(device)
    forced = None
    if target.decode_tokens == "random":
        forced = torch.randint(0, cfg.vocab_size, (target.batch_size, target.new_tokens), generator=generator)
        forced = forced.to(device)
    B, P, N = target.batch_size, target.prompt_len, target.new_tokens

    with torch.inference_mode():
        warm = DECODERS[decoder](model)
        for _ in range(target.warmup):
            warm.generate(prompt, N, forced)
        # A decoder may keep buffers between generations (graphed does): the monitored
        # generation gets a new one, so what it allocates counts, and only one is alive.
        del warm
        run = DECODERS[decoder](model)
        with PeakMemory(device) as peak:
            generation = run.generate(prompt, N, forced)

        # a graphed decoder's timed prefill is one graph replay, queued at once
        clock = Clock(device, queue_ahead=isinstance(getattr(run, "prefill", None), CapturedPrefill))
        prefill_s, decode_s, timed = [], [], []
        with collector_paused():
            if device.type == "cuda":
                # untimed: the decoder captures its prefill graph on its second generation, and
                # the first timed repeat does not follow the collection (H200: slower after it)
                for _ in range(2):
                    run.generate(prompt, N, forced)
            for _ in range(target.repeats):
                clock.start()
                generation = run.generate(prompt, N, forced, on_iteration=clock.mark, on_prefill=clock.mark)
                # times[0]: end of the prompt's forward; times[1]: the first token, after the
                # decoder's set-up; then each decode iteration
                times = clock.seconds()
                prefill_s.append(times[0])
                decode_s.append(times[-1] - times[1])
                timed.append((times[1:], generation.emissions))  # pooled after the repeats: no host work between them
    latencies = [gap for times, emissions in timed for gap in inter_token_latencies(times, emissions)]

    param_bytes = parameter_bytes(model)
    decoded = B * (N - 1)  # tokens produced after the prefill
    prefill_median, decode_median = statistics.median(prefill_s), statistics.median(decode_s)
    return Measurement(
        device=describe_device(device),
        dtype=target.dtype,
        batch_size=B,
        prompt_len=P,
        new_tokens=N,
        decoder=decoder,
        peak_memory_bytes=param_bytes + peak.growth_bytes,
        peak_growth_bytes=peak.growth_bytes,
        kv_cache_bytes=generation.cache_bytes,
        param_bytes=param_bytes,
        prefill_tokens_per_s=B * P / prefill_median,
        decode_tokens_per_s=decoded / decode_median,
        latency_p50_ms=1e3 * percentile(latencies, 50),
        latency_p90_ms=1e3 * percentile(latencies, 90),
        decode_cv=coefficient_of_variation(decode_s),
        prefill_cv=coefficient_of_variation(prefill_s),
        step_token_fraction=tuple(count / decoded for count in generation.step_tokens),
        repeats=target.repeats,
        decode_seconds=tuple(decode_s),
        prefill_seconds=tuple(prefill_s),
        versions=library_versions(),
    )
