"""Plain Llama building blocks used by ``mor.py``: RMSNorm, RoPE, GQA attention, SwiGLU.

Shape legend: B batch, T tokens in this call (possibly a gathered subset of the
sequence), S key/value length, D d_model, H query heads, G key/value heads,
E head size.

Tokens are addressed by their *original* sequence position, so a layer can run on
any sorted subset of a sequence (the tokens a router kept): RoPE uses those
positions and the causal mask compares them, never 0..T-1 renumbering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from morsearch.config import ModelConfig

if TYPE_CHECKING:
    from morsearch.model.kv_cache import CacheSlot, StepKV


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE tables, indexed by absolute token position."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (L, E/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos, sin of shape (B, 1, T, E/2), broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, E) by the half-split convention (Llama/NeoX)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.type_as(x)


class Attention(nn.Module):
    """Grouped-query causal self-attention over (a subset of) a sequence."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        context: AttentionContext,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, E)
        q = apply_rope(q, *rope)
        if context.reads_only:
            # Recursive KV sharing at a deeper step: no K/V projection at all.
            k, v, mask = context.keys_values(None, None)
        else:
            k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, T, E)
            v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            k, v, mask = context.keys_values(apply_rope(k, *rope), v)
        grouped = self.num_heads != self.num_kv_heads
        if grouped and mask is not None:  # enable_gqa with a mask would run the unfused math kernels
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            grouped = False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=grouped
        )  # (B, H, T, E)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class AttentionContext:
    """Where one attention call gets its keys/values and mask from.

    Three cases, chosen by ``mor.py`` per layer application:

    * plain: keys are the call's own tokens in causal order, valid ones before any
      padding (``mask=None`` lets SDPA use its fused causal kernels);
    * cached: new K/V are appended to a ``CacheSlot`` and queries attend to the
      slot's entries whose position is <= their own;
    * shared: a deeper recursion step reads another step's slot and projects no K/V;
      without a cache, step 0 keeps its K/V in a ``stash`` for those steps.
    """

    def __init__(
        self,
        query_positions: torch.Tensor,
        query_valid: torch.Tensor | None = None,
        write_slot: CacheSlot | None = None,
        read_slot: CacheSlot | StepKV | None = None,
        stash: StepKV | None = None,
    ) -> None:
        self.query_positions = query_positions  # (B, T)
        self.query_valid = query_valid  # (B, T) bool, None = all valid
        self.write_slot = write_slot
        self.read_slot = read_slot
        self.stash = stash

    @property
    def reads_only(self) -> bool:
        return self.read_slot is not None and self.write_slot is None

    def keys_values(
        self, k: torch.Tensor | None, v: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.read_slot is None:
            assert k is not None and v is not None
            if self.stash is not None:
                self.stash.append(k, v, self.query_positions, self.query_valid)
            # Selected tokens come first in each row, in position order, and padding after
            # them, so the plain causal mask over the compacted order never lets a valid
            # query see padding; padding outputs are discarded by the caller.
            return k, v, None
        if self.write_slot is not None:
            assert k is not None and v is not None
            self.write_slot.append(k, v, self.query_positions, self.query_valid)
        keys, values, key_positions, key_valid = self.read_slot.view()
        mask = (key_positions.unsqueeze(-2) <= self.query_positions.unsqueeze(-1)) & key_valid.unsqueeze(-2)
        return keys, values, _never_empty(mask).unsqueeze(1)


def _never_empty(mask: torch.Tensor) -> torch.Tensor:
    """Let padding queries with no valid key attend everywhere (their output is discarded),
    so softmax never sees an all-masked row (NaN, also in the backward pass)."""
    return mask | ~mask.any(dim=-1, keepdim=True)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer; its output includes its own residual connections."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], context: AttentionContext
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, context)
        return x + self.mlp(self.mlp_norm(x))
