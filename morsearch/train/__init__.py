"""Proxy and full training of MoR models with PyTorch Lightning (never imports optuna)."""

from morsearch.train.module import MoRLightningModule, lr_factor
from morsearch.train.proxy import ProxyResult, planned_steps, run_proxy

__all__ = ["MoRLightningModule", "ProxyResult", "lr_factor", "planned_steps", "run_proxy"]
