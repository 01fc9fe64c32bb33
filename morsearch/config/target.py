"""``DeploymentTarget``: where and how a model is measured (device, dtype, batch, lengths).

The memory and throughput objectives of every trial are measured on this target,
so a user who deploys on phones or laptops says ``device: cpu`` and the search
optimises what that device really does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from morsearch.config.base import FrozenConfig

DeviceName = Literal["cuda", "cpu", "auto"]
DtypeName = Literal["float32", "bfloat16", "float16"]
DecodeTokensName = Literal["random", "greedy"]

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


class DeploymentTarget(FrozenConfig):
    """The inference workload one Measurement describes: prefill a prompt, then decode."""

    name: str = Field("default", description="Short label of the target, recorded with each measurement.")
    device: DeviceName = Field(
        "auto", description="Device to measure on: cuda, cpu, or auto (cuda when available, else cpu)."
    )
    dtype: DtypeName = Field("bfloat16", description="Weights and activations dtype during inference.")
    batch_size: int = Field(1, ge=1, description="Sequences decoded together.")
    prompt_len: int = Field(128, ge=1, description="Prompt tokens per sequence (the prefill).")
    new_tokens: int = Field(64, ge=1, description="Tokens generated per sequence after the prompt.")
    decode_tokens: DecodeTokensName = Field(
        "random",
        description=(
            "Tokens fed back while decoding: random (a fixed random continuation, teacher-forced: the same "
            "work per token as generation, varied routing even where an untrained model would repeat one "
            "token, and one workload for every decoder) or greedy (the model's own argmax)."
        ),
    )
    repeats: int = Field(5, ge=1, description="Timed repeats of the generation; the median is reported.")
    warmup: int = Field(1, ge=0, description="Untimed generations run first (allocator, kernels, caches).")

    @property
    def total_len(self) -> int:
        """Longest sequence the model must serve: prompt plus generated tokens."""
        return self.prompt_len + self.new_tokens

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]
