"""``TrainBudget``: how long and how one configuration is trained.

Models are compared at equal training FLOPs by default (``kind: flops``), as the
MoR paper does (MOR.md section 5.1): a routed-out token costs less compute, so at
equal FLOPs an MoR model sees more tokens than a vanilla one of the same size.
FLOPs are counted with ``morsearch.model.sizing.training_flops_per_token``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from morsearch.config.base import FrozenConfig
from morsearch.errors import ConfigError

BudgetKind = Literal["flops", "tokens", "steps", "seconds"]
ScheduleName = Literal["wsd", "cosine"]


class TrainBudget(FrozenConfig):
    """The budget, batch shape and optimiser settings of one training run."""

    kind: BudgetKind = Field(
        "flops",
        description="What the budget counts: training FLOPs (default, the paper's iso-FLOP), tokens, "
        "optimizer steps or wall-clock seconds of training.",
    )
    value: float = Field(gt=0, description="Size of the budget in units of ``kind`` (e.g. 2e12 FLOPs).")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step.")
    seq_len: int = Field(128, ge=2, description="Tokens per training sequence (at most the model's max_seq_len).")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (the paper uses 3e-3).")
    min_lr_fraction: float = Field(
        0.0, ge=0, le=1, description="Learning rate at the end of decay, as a share of the peak."
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay (matrices only).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip; 0 disables clipping.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent in linear warm-up.")
    decay_fraction: float = Field(
        0.2, ge=0, le=1, description="WSD only: share of the steps spent in the final linear cool-down."
    )
    schedule: ScheduleName = Field(
        "wsd",
        description="Learning-rate schedule after warm-up: wsd (warmup-stable-decay, the paper's main runs) or cosine.",
    )
    eval_every: int = Field(
        0, ge=0, description="Validate every this many optimizer steps; 0: about 8 evaluations per run."
    )
    val_batches: int = Field(8, ge=1, description="Validation batches per evaluation (the same ones every time).")
    val_batch_size: int | None = Field(
        None,
        ge=1,
        description="Windows per validation forward; default: up to val_batches training batches at once, as memory "
        "allows. Lower it if validation runs out of memory; the validation set is the same either way.",
    )
    seed: int = Field(0, description="Seed of the model init and batch order.")
    compile: bool = Field(False, description="Compile the model with torch.compile (pays off on GPU for long runs).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training precision: auto = bf16 autocast on CUDA, fp32 on CPU."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainBudget:
        if self.kind == "steps" and self.value != int(self.value):
            raise ConfigError(f"value: a steps budget must be a whole number (got {self.value}); round it")
        if self.schedule == "wsd" and self.warmup_fraction + self.decay_fraction > 1:
            raise ConfigError(
                f"warmup_fraction + decay_fraction = {self.warmup_fraction + self.decay_fraction:g} > 1; "
                "lower one of them so warm-up and cool-down fit in the run"
            )
        return self

    @property
    def tokens_per_step(self) -> int:
        """Training tokens in one optimizer step."""
        return self.batch_size * self.seq_len
