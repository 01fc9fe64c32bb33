"""morsearch: search Mixture-of-Recursions transformer designs for a deployment target."""

from morsearch.config import ModelConfig, load_config
from morsearch.errors import ConfigError, DataError, MorsearchError, StorageError, TrainingError

__all__ = [
    "ConfigError",
    "DataError",
    "ModelConfig",
    "MorsearchError",
    "StorageError",
    "TrainingError",
    "load_config",
]
__version__ = "0.2.0"
