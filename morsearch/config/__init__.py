"""Validated, frozen configs read from YAML. Imports no torch, optuna or sqlalchemy."""

from morsearch.config.base import FrozenConfig
from morsearch.config.budget import BudgetKind, ScheduleName, TrainBudget
from morsearch.config.data import DataConfig, DataSource, TokenizerName
from morsearch.config.load import load_config, read_yaml
from morsearch.config.model import (
    BalancingName,
    GateName,
    KVStrategyName,
    ModelConfig,
    RouterName,
    RouterNetworkName,
    SharingName,
)
from morsearch.config.space import METRICS, Constraint, MetricName, Objective, ParamSpec, SearchSpace
from morsearch.config.target import DeploymentTarget, DeviceName, DtypeName

__all__ = [
    "BudgetKind",
    "DataConfig",
    "DataSource",
    "ScheduleName",
    "TokenizerName",
    "TrainBudget",
    "BalancingName",
    "DeploymentTarget",
    "DeviceName",
    "DtypeName",
    "FrozenConfig",
    "GateName",
    "KVStrategyName",
    "ModelConfig",
    "RouterName",
    "RouterNetworkName",
    "SharingName",
    "load_config",
    "read_yaml",
    "METRICS",
    "Constraint",
    "MetricName",
    "Objective",
    "ParamSpec",
    "SearchSpace",
]
