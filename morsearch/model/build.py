"""Build a model from its config, and save and load trained weights with it."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from pydantic import ValidationError

from morsearch.config import ModelConfig
from morsearch.errors import ConfigError
from morsearch.model.mor import MoRModel


def build_model(
    cfg: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> MoRModel:
    """A randomly initialised ``MoRModel`` (seed with ``torch.manual_seed`` first)."""
    model = MoRModel(cfg)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def save_trained(model: MoRModel, path: Path, **extra: int | float | str) -> None:
    """Write ``model``'s weights and config to ``path``, loadable with ``torch.load(path, weights_only=True)``.

    A plain dict of tensors, numbers and strings (``model_config``, ``state_dict`` and
    ``extra``, e.g. the training step), so reading it runs no pickled code.
    """
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"model_config": model.cfg.model_dump(mode="json"), "state_dict": state, **extra}, path)


def load_trained(path: Path) -> MoRModel:
    """The model that ``save_trained`` (``morsearch train``'s ``model.pt``) wrote, on the CPU, in eval mode.

    Raises:
        ConfigError: The file is missing, is not such a file, or its config or weights do
            not fit this version's ``ModelConfig`` / ``MoRModel``.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file; give the model.pt that `morsearch train` wrote")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"{path}: not a weights file torch can read safely ({exc}); give a model.pt") from None
    if not isinstance(saved, dict) or not {"model_config", "state_dict"} <= set(saved):
        raise ConfigError(f"{path}: holds no 'model_config' and 'state_dict'; give the model.pt of `morsearch train`")
    try:
        cfg = ModelConfig.model_validate(saved["model_config"])
    except ValidationError as exc:
        raise ConfigError(f"{path}: its model_config does not validate: {exc}") from None
    model = MoRModel(cfg)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"{path}: its weights do not fit its model_config: {exc}") from None
    return model.eval()
