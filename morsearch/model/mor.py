"""``MoRModel``: a Mixture-of-Recursions decoder, top to bottom in one forward.

    tokens -> embed -> pre-block layers (unique; everything for sequence sharing)
           -> for each recursion step r:
                  router selects tokens     (expert-choice top-k / threshold, token-choice depth)
                  gather them               (B, T, D) -> (B, K, D): unselected tokens do no work
                  shared block              the same layers at every step (weights tied)
                  merge + scatter back      h + alpha * gate * Block(h)  (per router)
           -> post-block layers -> norm -> head (tied to the embedding by default)

Shape legend: B batch, T tokens in this call, K tokens selected at a step, D d_model,
V vocabulary. With a ``KVCache`` the same forward serves prefill (T prompt tokens)
and decoding (T = 1); positions continue from ``cache.seq_len``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from morsearch.config import ModelConfig
from morsearch.errors import ConfigError
from morsearch.model.kv_cache import KVCache, StepKV, writes_own_kv
from morsearch.model.layers import AttentionContext, RMSNorm, RotaryEmbedding, TransformerLayer
from morsearch.model.routers import ROUTERS, gather_tokens
from morsearch.model.sharing import Application, layer_schedule


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor  # scalar, router losses weighted by their coefficients
    aux_losses: dict[str, torch.Tensor]  # unweighted parts, for logging
    step_token_fraction: torch.Tensor  # (num recursion steps,) share of tokens run at each step


class MoRModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = layer_schedule(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # One module per *unique* layer: every recursion step calls the same module, so
        # the tying cannot be lost by copying or re-creating submodules (MOR.md 6.3).
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_unique_layers))
        self.router = ROUTERS[cfg.router](cfg)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def new_cache(self, batch_size: int, chunk_tokens: int = 256) -> KVCache:
        return KVCache(self.cfg, batch_size, chunk_tokens)

    def compile_layers(self, **compile_kwargs: object) -> None:
        """``torch.compile`` each unique layer in place (weights stay tied: the modules are
        not replaced). Layers share one compiled graph per input shape, so compiling costs
        seconds rather than minutes even for deep models; routing stays eager.

        Static graphs: expert-choice training sees one token count per recursion step;
        token-choice pads its varying counts to eighths of the sequence (``compact``), so
        it needs up to 8 shapes per step, more than dynamo's default recompile limit.
        """
        compile_kwargs.setdefault("dynamic", False)
        if self.cfg.router == "token_choice":
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for layer in self.layers:
            layer.compile(**compile_kwargs)

    def after_optimizer_step(self) -> None:
        """Non-learned router state (token-choice loss-free bias); call after each step."""
        self.router.after_optimizer_step()

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> ModelOutput:
        """Logits (B, T, V) of every position; with ``last_only`` of the last one (B, 1, V),
        all that a prefill needs (the head over every prompt token is most of its memory)."""
        B, T = idx.shape
        start = cache.seq_len if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ConfigError(
                f"{start + T} tokens exceed max_seq_len={self.cfg.max_seq_len}; "
                "raise max_seq_len in the model config or feed shorter sequences"
            )
        positions = torch.arange(start, start + T, device=idx.device).expand(B, T)  # (B, T)
        rope = self.rope(positions)
        stash: dict[int, StepKV] = {}  # step-0 K/V per layer, for recursive sharing without a cache

        def context(application: Application, pos: torch.Tensor, valid: torch.Tensor | None) -> AttentionContext:
            if cache is not None:
                write_slot, read_slot = cache.slots_for(application)
                return AttentionContext(pos, valid, write_slot=write_slot, read_slot=read_slot)
            layer = application[0]
            if not writes_own_kv(self.cfg, application):
                return AttentionContext(pos, valid, read_slot=stash[layer])
            if self.cfg.kv_strategy == "recursive_sharing":
                stash[layer] = StepKV()
                return AttentionContext(pos, valid, stash=stash[layer])
            return AttentionContext(pos, valid)

        h = self.embed(idx)  # (B, T, D)
        for application in self.schedule.pre_block:
            h = self.layers[application[0]](h, rope, context(application, positions, None))

        self.router.start(h)
        step_tokens = []
        for step in range(self.schedule.num_block_steps):
            selection = self.router.select(step, h)
            if selection.index is not None and selection.index.shape[1] == 0:
                # no token takes this step, so (routing is nested) none takes a deeper one
                step_tokens += [selection.num_tokens] * (self.schedule.num_block_steps - step)
                break
            if selection.index is None:  # every token runs this step: no gather
                h_in, step_positions, step_rope = h, positions, rope
            else:
                h_in = gather_tokens(h, selection.index)  # (B, K, D)
                step_positions = start + selection.index
                step_rope = self.rope(step_positions)
            out = h_in
            for layer in self.schedule.block:
                out = self.layers[layer](out, step_rope, context((layer, step), step_positions, selection.valid))
            merged = self.router.merge(step, h_in, out, selection)  # (B, K, D)
            if selection.valid is not None:  # padding entries keep their state
                merged = torch.where(selection.valid.unsqueeze(-1), merged, h_in)
            if selection.index is None:
                h = merged
            else:
                scatter_index = selection.index.unsqueeze(-1).expand(-1, -1, h.shape[-1])
                h = h.scatter(1, scatter_index, merged)
            step_tokens.append(selection.num_tokens)

        for application in self.schedule.post_block:
            h = self.layers[application[0]](h, rope, context(application, positions, None))

        h = self.norm(h[:, -1:] if last_only else h)
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.embed.weight)  # (B, T, V)
        if cache is not None:
            cache.seq_len += T
        aux_loss = self.router.weighted_aux_loss()
        fractions = torch.stack(step_tokens).float().detach() / (B * T) if step_tokens else logits.new_zeros(0)
        return ModelOutput(
            logits=logits,
            aux_loss=aux_loss if aux_loss is not None else logits.new_zeros(()),
            aux_losses=self.router.aux_losses(),
            step_token_fraction=fractions,
        )
