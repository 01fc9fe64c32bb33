"""The tiny run every train test starts from: ~30k parameters, byte data, a few dozen steps."""

from __future__ import annotations

from morsearch.config import DataConfig, ModelConfig, TrainBudget

DATA = DataConfig(builtin_tokens=40_000, val_fraction=0.1)


def tiny_mor(**changes: object) -> ModelConfig:
    """Expert-choice MoR, cycle sharing, 2 recursions; vocabulary 128 covers the builtin corpus."""
    base = dict(
        vocab_size=128,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        ffn_dim=64,
        num_layers=4,
        max_seq_len=32,
        num_recursions=2,
        sharing="cycle",
        router="expert_choice",
    )
    return ModelConfig(**{**base, **changes})


def steps_budget(steps: int = 30, **changes: object) -> TrainBudget:
    base = dict(kind="steps", value=steps, batch_size=8, seq_len=32, eval_every=10, val_batches=2)
    return TrainBudget(**{**base, **changes})
