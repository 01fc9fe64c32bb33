"""Analytic accounting of a ``ModelConfig``: parameters, FLOPs, KV-cache bytes.

Pure arithmetic (no torch), so the search can reject configurations before any
training. FLOPs follow the paper's counting (MOR.md section 5.1): forward = 2 x
matmul parameters touched per token + QK^T and AV on the causal triangle only;
norms, activations and softmax are ignored; training = 3 x forward. MoR steps run
on the share of tokens given by the capacities (token-choice: perfect balance).
"""

from __future__ import annotations

from collections.abc import Sequence

from morsearch.config import ModelConfig
from morsearch.config.model import ROUTER_HIDDEN_MULTIPLIER
from morsearch.model.kv_cache import cached_applications
from morsearch.model.sharing import layer_schedule


def unique_parameters(cfg: ModelConfig) -> int:
    """Distinct parameters of the built module (embeddings included)."""
    return cfg.unique_parameters()


def _layer_matmul_parameters(cfg: ModelConfig, with_kv: bool = True) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    kv = 2 * d * cfg.kv_heads * hd if with_kv else 0
    return 2 * d * cfg.num_heads * hd + kv + 3 * d * cfg.ffn_dim


def _router_matmul_parameters_per_token(cfg: ModelConfig, step_tokens: Sequence[float]) -> float:
    """Router parameters each token touches, weighted by how many tokens a router sees."""
    if cfg.router == "none":
        return 0.0
    d, hidden = cfg.d_model, ROUTER_HIDDEN_MULTIPLIER[cfg.router_network] * cfg.d_model
    outputs = 1 if cfg.router == "expert_choice" else cfg.num_recursions
    per_call = d * outputs if hidden == 0 else d * hidden + hidden * outputs
    if cfg.router == "token_choice":
        return float(per_call)  # one router call per token
    seen = [1.0, *step_tokens[:-1]]  # the step-r router scores the survivors of step r-1
    return per_call * sum(seen)


def step_token_shares(cfg: ModelConfig, seq_len: int | None = None) -> list[float]:
    """Share of a sequence's tokens that runs each recursion step.

    With ``seq_len`` the expert-choice shares are exact for training (k = max(1, floor(c T))).
    """
    capacities = cfg.step_capacities
    if seq_len is None or cfg.router != "expert_choice":
        return list(capacities)
    return [1.0 if c >= 1.0 else max(1, int(c * seq_len)) / seq_len for c in capacities]


def params_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Matmul parameters a token touches on average, output head included."""
    schedule = layer_schedule(cfg)
    shares = step_token_shares(cfg, seq_len)
    total = 0.0
    for layer, step in schedule.applications():
        share = shares[step] if layer in schedule.block else 1.0
        with_kv = cfg.kv_strategy == "recursion_wise" or step == 0
        total += share * _layer_matmul_parameters(cfg, with_kv=with_kv)
    total += _router_matmul_parameters_per_token(cfg, shares)
    return total + cfg.vocab_size * cfg.d_model


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """QK^T and AV FLOPs per token, averaged over a causal sequence of ``seq_len``."""
    schedule = layer_schedule(cfg)
    shares = step_token_shares(cfg, seq_len)
    per_key = 4 * cfg.num_heads * cfg.head_dim  # 2 matmuls x 2 FLOPs per multiply-add
    total = 0.0
    for layer, step in schedule.applications():
        share = shares[step] if layer in schedule.block else 1.0
        keys = share * seq_len if cfg.kv_strategy == "recursion_wise" else seq_len
        # share of queries, each seeing on average half of the keys before it
        total += share * per_key * (keys + 1) / 2
    return total


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 2 * params_per_token(cfg, seq_len) + attention_flops_per_token(cfg, seq_len)


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward (2 x forward), the unit of the training budgets."""
    return 3 * forward_flops_per_token(cfg, seq_len)


def forward_matmul_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Exact FLOPs of the linear layers (what ``FlopCounterMode`` counts) for one training-mode forward."""
    return 2 * params_per_token(cfg, seq_len) * batch_size * seq_len


def kv_bytes_per_token_per_slot(cfg: ModelConfig, dtype_bytes: int = 2) -> int:
    return 2 * cfg.kv_heads * cfg.head_dim * dtype_bytes


def kv_cache_bytes(
    cfg: ModelConfig, num_tokens: int, step_tokens: Sequence[float] | None = None, dtype_bytes: int = 2
) -> float:
    """K/V bytes a cache holds for ``num_tokens`` tokens of one sequence.

    ``step_tokens`` gives the tokens stored at each recursion step (default: the
    capacities times ``num_tokens``); layers outside the block store every token.
    """
    schedule = layer_schedule(cfg)
    if step_tokens is None:
        step_tokens = [share * num_tokens for share in cfg.step_capacities]
    per_token = kv_bytes_per_token_per_slot(cfg, dtype_bytes)
    total = 0.0
    for layer, step in cached_applications(cfg):
        total += per_token * (step_tokens[step] if layer in schedule.block else num_tokens)
    return total


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2) -> float:
    """Expected KV-cache bytes per token of context (recursion-wise: capacity-weighted)."""
    return kv_cache_bytes(cfg, 1, dtype_bytes=dtype_bytes)


def describe(cfg: ModelConfig, seq_len: int | None = None, dtype_bytes: int = 2) -> dict[str, object]:
    """The accounting of one config as a flat, JSON-ready dict."""
    seq_len = seq_len or cfg.max_seq_len
    return {
        "params_unique": cfg.unique_parameters(),
        "params_non_embedding": cfg.non_embedding_parameters(),
        "params_embedding": cfg.embedding_parameters(),
        "params_per_token": params_per_token(cfg, seq_len),
        "unique_layers": cfg.num_unique_layers,
        "effective_depth": cfg.num_layers,
        "step_capacities": list(cfg.step_capacities),
        "seq_len": seq_len,
        "flops_per_token": forward_flops_per_token(cfg, seq_len),
        "training_flops_per_token": training_flops_per_token(cfg, seq_len),
        "kv_bytes_per_token": kv_bytes_per_token(cfg, dtype_bytes),
        "kv_dtype_bytes": dtype_bytes,
    }
