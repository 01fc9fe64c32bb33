"""``Measurement``: what one run of a model on a deployment target measured.

A frozen record (STYLE.md: dataclasses for internal results). Every number is
measured on the running model except ``param_bytes``, which is the exact byte
size of the weights the run used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """Memory and speed of one model generating on one deployment target.

    Attributes:
        device: What ran it, e.g. ``"cuda: NVIDIA H100 80GB HBM3"`` or ``"cpu: x86_64, 2 threads"``.
        dtype: Inference dtype (``bfloat16``, ...).
        batch_size: Sequences generated together.
        prompt_len: Prompt tokens per sequence.
        new_tokens: Tokens generated per sequence (the first comes from the prefill).
        decoder: Decoder that generated (a key of ``morsearch.model.decoders.DECODERS``).
        peak_memory_bytes: Weights plus the peak memory growth while generating once
            (KV cache, activations, temporaries). GPU: from the allocator's peak;
            CPU: from the process's peak resident memory, sampled by a thread.
        peak_growth_bytes: The growth part alone (``peak_memory_bytes - param_bytes``).
        kv_cache_bytes: Bytes the KV cache held on its device at the end of generation.
        param_bytes: Bytes of the distinct parameters (tied weights counted once).
        prefill_tokens_per_s: Prompt tokens processed per second (median over repeats):
            the prompt's forward, without the decoder's set-up that follows it.
        decode_tokens_per_s: Tokens generated per second after the prefill, whole batch
            (median over repeats).
        latency_p50_ms: Median time between two tokens of one sequence, in ms.
        latency_p90_ms: 90th percentile of that time, in ms.
        decode_cv: Coefficient of variation (std / mean) of the decode time over repeats.
        prefill_cv: The same for the prefill time.
        step_token_fraction: Share of decoded tokens that ran each recursion step
            (the trained routers' real decisions; empty without a recursion block).
        repeats: Timed repeats behind the medians.
        decode_seconds: Raw decode time of each repeat.
        prefill_seconds: Raw prefill time of each repeat.
        versions: Library versions and the morsearch version that measured.
    """

    device: str
    dtype: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    decoder: str
    peak_memory_bytes: int
    peak_growth_bytes: int
    kv_cache_bytes: int
    param_bytes: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    decode_cv: float
    prefill_cv: float
    step_token_fraction: tuple[float, ...]
    repeats: int
    decode_seconds: tuple[float, ...]
    prefill_seconds: tuple[float, ...]
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }
