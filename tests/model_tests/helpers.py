"""Config builders shared by the model tests."""

from __future__ import annotations

import itertools

import torch

from morsearch.config import ModelConfig
from morsearch.errors import ConfigError

SHARINGS = ("none", "cycle", "sequence", "middle_cycle", "middle_sequence")
ROUTER_NAMES = ("none", "expert_choice", "token_choice")
KV_NAMES = ("recursion_wise", "recursive_sharing")
TINY_SHAPE = dict(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64, max_seq_len=32)


def tiny(sharing: str, router: str, kv_strategy: str, num_recursions: int, shared_layers: int = 1) -> ModelConfig:
    """A tiny config with ``shared_layers`` layers per recursion step (plus 2 for middle types)."""
    extra = 2 if sharing.startswith("middle") else 0
    return ModelConfig(
        **TINY_SHAPE,
        num_layers=extra + shared_layers * num_recursions,
        num_recursions=num_recursions,
        sharing=sharing,
        router=router,
        kv_strategy=kv_strategy,
    )


def is_valid_combination(sharing: str, router: str, num_recursions: int) -> bool:
    """What the paper allows: vanilla only without recursion/routing; routing only with cycle types."""
    if sharing == "none":
        return num_recursions == 1 and router == "none"
    return router == "none" or sharing in ("cycle", "middle_cycle")


def all_combinations():
    return list(itertools.product(SHARINGS, ROUTER_NAMES, KV_NAMES, (1, 2, 3, 4)))


def valid_configs() -> list[ModelConfig]:
    configs = []
    for sharing, router, kv, nr in all_combinations():
        if is_valid_combination(sharing, router, nr):
            configs.append(tiny(sharing, router, kv, nr))
    return configs


def config_id(cfg: ModelConfig) -> str:
    return f"{cfg.sharing}-{cfg.router}-{cfg.kv_strategy}-nr{cfg.num_recursions}"


def perturbed_pair(cfg: ModelConfig, length: int, cut: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two token batches (batch, length) equal up to position ``cut`` and different after it."""
    idx = torch.randint(0, cfg.vocab_size, (batch, length))
    changed = idx.clone()
    changed[:, cut + 1 :] = torch.randint(0, cfg.vocab_size, (batch, length - cut - 1))
    return idx, changed


def decode_incrementally(model, idx: torch.Tensor, prompt: int, chunk_tokens: int = 256):
    """Prefill ``idx[:, :prompt]`` into a fresh KV cache, then feed the rest one token per call.

    Returns the cache and the model outputs in order (the prefill first).
    """
    cache = model.new_cache(idx.shape[0], chunk_tokens=chunk_tokens)
    outputs = [model(idx[:, :prompt], cache=cache)]
    for t in range(prompt, idx.shape[1]):
        outputs.append(model(idx[:, t : t + 1], cache=cache))
    return cache, outputs


__all__ = [
    "ConfigError",
    "all_combinations",
    "config_id",
    "decode_incrementally",
    "is_valid_combination",
    "perturbed_pair",
    "tiny",
    "valid_configs",
]
