"""Build a model from its config."""

from __future__ import annotations

import torch

from morsearch.config import ModelConfig
from morsearch.model.mor import MoRModel


def build_model(
    cfg: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> MoRModel:
    """A randomly initialised ``MoRModel`` (seed with ``torch.manual_seed`` first)."""
    model = MoRModel(cfg)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
