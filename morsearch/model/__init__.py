"""The MoR transformer: layers, sharing strategies, routers, KV caches and sizing."""

from morsearch.model import sizing
from morsearch.model.build import build_model, load_trained, save_trained
from morsearch.model.kv_cache import KV_STRATEGIES, KVCache
from morsearch.model.mor import ModelOutput, MoRModel
from morsearch.model.routers import ROUTERS, Router
from morsearch.model.sharing import SHARING_STRATEGIES, LayerSchedule, layer_schedule

__all__ = [
    "KV_STRATEGIES",
    "KVCache",
    "LayerSchedule",
    "ModelOutput",
    "MoRModel",
    "ROUTERS",
    "Router",
    "SHARING_STRATEGIES",
    "build_model",
    "layer_schedule",
    "load_trained",
    "save_trained",
    "sizing",
]
