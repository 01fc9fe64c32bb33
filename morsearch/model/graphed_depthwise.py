"""Continuous depth-wise batching with every shape fixed: one CUDA graph per iteration.

``decoding.DepthwiseDecoder`` lets every sequence advance on its own, so that one
call of the shared block takes tokens at different recursion steps and a stopped
token's row takes its sequence's next token at once. Its calls change shape every
iteration (which rows are in flight, which stop), so they cannot be captured. This
decoder runs the same schedule over **all B rows in every call** and keeps the
decisions in masks instead of row lists:

    iteration (one graph, all rows):
      block    every row runs the block at its own step; rows with no token in the
               block (done, or passed over by the router) keep their state
      decide   each row's router rules on its next step: go on, or stop
      exit     post-block layers, norm, head; the rows that stopped emit a token
      enter    embedding, pre-block layers, router entry and step-0 decision of
               those rows' next tokens

Decode batches are small enough that the GPU is bound by the number of kernels,
not by their rows, so computing every row costs about what computing the active
ones would. What saves time is that the block runs once per iteration for every
depth at once: a token of depth d takes d iterations, each of one block call plus
the layers outside it, where lockstep runs every step that any row reaches.
Nothing is read back while decoding: the host replays the graph as many times as
the sequence furthest behind still needs tokens (a lower bound on the iterations
left, as every token takes at least one), then reads how far the rows got.

K/V. One buffer per layer holds every application of it that writes, side by side
along the entries: step s of a shared layer in columns [offset_s, offset_s + C_s],
the last of which is a dump that the rows not writing in a call write to (never
read). A row at step s writes at offset_s + its length at step s and attends to its
own region only (a mask), so one write and one attention call (``graphed.decode_attention``)
serve rows at every step. Under recursive sharing only step 0 has a region, which every
step reads.

Shape legend: B batch, D d_model, G key/value heads, H query heads, E head size,
W entries of a buffer, S steps with regions of their own, N new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from morsearch.model.decoding import DECODE_RULES, Generation, choose_tokens
from morsearch.model.graphed import (
    CapturedPrefill,
    Family,
    compiled,
    decode_attention,
    family_of,
    prefill_lengths,
    run_graphed,
)
from morsearch.model.kv_cache import KVCache, shared_source, writes_own_kv
from morsearch.model.layers import apply_rope
from morsearch.model.mor import MoRModel
from morsearch.model.sharing import Application

ALIGN = 8  # buffer entries rounded up to a multiple: aligned rows for the matmul kernels


@dataclass(frozen=True)
class _Region:
    """Where one application's K/V lie in its layer's buffer: columns [offset, offset + capacity]."""

    buffer: Hashable  # ("block", layer) for a layer of the recursion block, else the application
    offset: int
    capacity: int  # entries; column offset + capacity is the dump


class _Workload:
    """The static buffers (and, on CUDA, the graphs) of one batch size, length and cache layout."""

    def __init__(
        self,
        model: MoRModel,
        cache: KVCache,
        filled: dict[Family, int],
        new_tokens: int,
        keep_logits: bool,
        forced: bool,
    ) -> None:
        cfg, schedule, like = model.cfg, model.schedule, model.embed.weight
        B, N, device = cache.batch_size, new_tokens, like.device
        self.batch_size, self.new_tokens = B, N
        self.all_rows = torch.arange(B, device=device)
        self.family = {app: family_of(model, app) for app in cache.slots}
        outside = {*schedule.pre_block, *schedule.post_block}
        self.regions: dict[Application, _Region] = {}
        widths: dict[Hashable, int] = {}
        for app, family in self.family.items():  # applications in order: a layer's steps ascending
            buffer: Hashable = app if app in outside else ("block", app[0])
            capacity = filled.get(family, 0) + N - 1  # the prefill's entries and one per token fed
            self.regions[app] = _Region(buffer, widths.get(buffer, 0), capacity)
            widths[buffer] = widths.get(buffer, 0) + capacity + 1
        self.keys: dict[Hashable, torch.Tensor] = {}  # (B, G, W, E)
        self.values: dict[Hashable, torch.Tensor] = {}
        for buffer, width in widths.items():
            shape = (B, cfg.kv_heads, -(-width // ALIGN) * ALIGN, cfg.head_dim)
            self.keys[buffer], self.values[buffer] = like.new_zeros(shape), like.new_zeros(shape)
        # entries per row: of the pre- and post-block families, and of each block step with a region
        self.lengths = {f: torch.zeros(B, dtype=torch.long, device=device) for f in ("pre", "post")}
        region_steps = sorted(f for f in set(self.family.values()) if isinstance(f, int))
        self.region_steps = region_steps  # block steps with K/V of their own: all, or step 0 (sharing)
        self.block_lengths = torch.zeros(len(region_steps), B, dtype=torch.long, device=device)  # (S, B)
        one_per_step = {self.family[app]: self.regions[app] for app in self.family if app not in outside}
        self.region_offset = torch.tensor([one_per_step[s].offset for s in region_steps], device=device)
        self.region_capacity = torch.tensor([one_per_step[s].capacity for s in region_steps], device=device)
        nr = schedule.num_block_steps
        # the region a token at each step reads: its own (recursion-wise) or step 0's (sharing)
        self.region_of_step = torch.tensor([region_steps.index(s) if s in region_steps else 0 for s in range(nr)])
        self.region_of_step = self.region_of_step.to(device)
        self.block_width = next((self.keys[r.buffer].shape[2] for r in one_per_step.values()), 0)
        # the token in flight of each row
        self.state = like.new_zeros(B, 1, cfg.d_model)  # its hidden state
        self.rule = DECODE_RULES[cfg.router](model, B, self.state)
        self.step = torch.zeros(B, dtype=torch.long, device=device)  # its step in the block
        self.in_block = torch.zeros(B, dtype=torch.bool, device=device)  # it runs the next block call
        self.in_flight = torch.zeros(B, dtype=torch.bool, device=device)  # the row has a token in flight
        self.position = torch.zeros(B, dtype=torch.long, device=device)
        self.current = torch.zeros(B, dtype=torch.long, device=device)  # the token it feeds next
        self.emitted = torch.zeros(B, dtype=torch.long, device=device)  # tokens emitted per row
        self.prompt_len = torch.zeros((), dtype=torch.long, device=device)
        self.step_tokens = torch.zeros(nr, dtype=torch.long, device=device)
        # column N of the outputs is the dump of rows that emit nothing
        self.tokens = torch.zeros(B, N + 1, dtype=torch.long, device=device)
        self.logits = like.new_zeros(B, N + 1, cfg.vocab_size) if keep_logits else None
        self.forced = torch.zeros(B, N + 1, dtype=torch.long, device=device) if forced else None
        self.first_logits = like.new_zeros(B, cfg.vocab_size)  # the prefill's, copied in
        # the rows that emitted at each iteration (0: the prefill); a token takes <= Nr iterations
        self.max_iterations = (N - 1) * max(nr, 1)
        self.emissions = torch.zeros(self.max_iterations + 1, B, dtype=torch.bool, device=device)
        self.iteration = torch.zeros(1, dtype=torch.long, device=device)
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if like.is_cuda else None

    def adopt(self, cache: KVCache) -> None:
        """Copy the prefill's K/V into the regions (freeing its copy as it goes) and take its lengths."""
        for lengths in (*self.lengths.values(), self.block_lengths):
            lengths.zero_()
        for app, slot in cache.slots.items():
            region, family = self.regions[app], self.family[app]
            if slot.keys is not None and slot.values is not None:
                used = min(slot.keys.shape[2], region.capacity)
                columns = slice(region.offset, region.offset + used)
                self.keys[region.buffer][:, :, columns] = slot.keys[:, :, :used]
                self.values[region.buffer][:, :, columns] = slot.values[:, :, :used]
            if slot.lengths is not None:  # equal within a family
                step = self.region_steps.index(family) if isinstance(family, int) else None
                (self.lengths[family] if step is None else self.block_lengths[step]).copy_(slot.lengths)
            slot.keys = slot.values = None

    def allocated_bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys.values(), self.values.values(), strict=True))


def _mask(start: torch.Tensor, end: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 1, 1, W): True on each row's columns [start, end) (column 0 for a row with none)."""
    columns = torch.arange(width, device=start.device)
    valid = (columns >= start.unsqueeze(1)) & (columns < end.unsqueeze(1))
    valid[:, :1] |= ~valid.any(dim=1, keepdim=True)  # a row with nothing to read (it is discarded): no NaN
    return valid.view(-1, 1, 1, width)


class GraphedDepthwiseDecoder:
    """Continuous depth-wise batching over all rows, one CUDA graph per iteration (module docstring).

    Args:
        model: The model to decode with (eval mode).
        compile: ``torch.compile`` the whole iteration before it is captured, so that its
            layers and its bookkeeping (masks, decisions, exits, entries) run as fused
            kernels. Every shape is static here, so one compilation serves a workload.
    """

    def __init__(self, model: MoRModel, compile: bool = False) -> None:
        self.model, self.cfg, self.schedule = model, model.cfg, model.schedule
        self.prefill = CapturedPrefill(model)
        self.workload: _Workload | None = None
        self.workload_key: tuple[object, ...] | None = None
        if compile:
            self._iteration = compiled(self._iteration)  # type: ignore[method-assign]

    # --- the layers of one stage, every row at once --------------------------------------------

    def _layers(
        self,
        w: _Workload,
        applications: list[tuple[int, Application, Application]],
        x: torch.Tensor,
        cols: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Layers on x (B, 1, D): (layer, application whose region it writes, region it reads) each.

        ``cols`` (B,) is the buffer column each row writes (dump columns for rows that do not).
        """
        model, B = self.model, w.batch_size
        rope = model.rope(w.position.view(B, 1))  # (B, 1, 1, E/2): each row at its own position
        for layer_index, written, read in applications:
            layer = model.layers[layer_index]
            attn = layer.attn
            H, G, E = attn.num_heads, attn.num_kv_heads, attn.head_dim
            a = layer.attn_norm(x)
            q = attn.q_proj(a).view(B, 1, H, E).transpose(1, 2)  # (B, H, 1, E)
            if writes_own_kv(self.cfg, written):
                assert cols is not None
                k = attn.k_proj(a).view(B, 1, G, E).transpose(1, 2)  # (B, G, 1, E)
                qk = apply_rope(torch.cat((q, k), dim=1), *rope)
                q = qk[:, :H]
                buffer = w.regions[written].buffer
                w.keys[buffer][w.all_rows, :, cols] = qk[:, H:, 0]
                w.values[buffer][w.all_rows, :, cols] = attn.v_proj(a).view(B, G, E)
            else:
                q = apply_rope(q, *rope)
            buffer = w.regions[read].buffer
            out = decode_attention(q, w.keys[buffer], w.values[buffer], mask)
            x = x + attn.o_proj(out.reshape(B, 1, H * E))
            x = x + layer.mlp(layer.mlp_norm(x))
        return x

    def _outside(self, w: _Workload, family: str, x: torch.Tensor, writing: torch.Tensor) -> torch.Tensor:
        """The pre- or post-block layers on every row; the ``writing`` rows (B,) store their K/V."""
        apps = self.schedule.pre_block if family == "pre" else self.schedule.post_block
        if not apps:
            return x
        lengths = w.lengths[family]
        capacity = next(w.regions[app].capacity for app in apps if app in w.regions)
        cols = torch.where(writing, lengths, capacity)  # each such application has a buffer of its own
        lengths += writing.long()
        mask = _mask(torch.zeros_like(lengths), lengths, w.keys[w.regions[apps[0]].buffer].shape[2])
        plan = [(app[0], app, app if app in w.regions else shared_source(app)) for app in apps]
        return self._layers(w, plan, x, cols, mask)

    def _block(self, w: _Workload) -> None:
        """Every row in the block runs it at its own step; the others keep their state."""
        B, step, running = w.batch_size, w.step, w.in_block
        region = w.region_of_step[step]  # (B,)
        writing = running & (step == 0) if self.cfg.kv_strategy == "recursive_sharing" else running
        lengths = w.block_lengths[region, w.all_rows]
        offset = w.region_offset[region]
        cols = torch.where(writing, offset + lengths, offset + w.region_capacity[region])
        lengths = lengths + writing.long()
        w.block_lengths[region, w.all_rows] = lengths
        mask = _mask(offset, offset + lengths, w.block_width)
        plan = []
        for layer in self.schedule.block:  # an application of each step writes the same buffer
            plan.append((layer, (layer, 0), shared_source((layer, 0))))
        h_in = w.state
        out = self._layers(w, plan, h_in, cols, mask)
        merged = w.rule.merge(w.all_rows, step, h_in, out)
        w.state.copy_(torch.where(running.view(B, 1, 1), merged, h_in))
        w.step_tokens.index_add_(0, step, running.long())

    def _decide(self, w: _Workload) -> torch.Tensor:
        """Rows whose token goes on to its next step (their step and gate advance); returns those that stop."""
        nr = self.schedule.num_block_steps
        following = w.step + 1
        going_on = w.in_block & (following < nr)
        if nr:
            keep, gate = w.rule.decision(following.clamp(max=nr - 1), w.all_rows, w.state)
            if keep is not None:
                going_on &= keep
            if gate is not None:
                w.rule.gate.copy_(torch.where(going_on, gate, w.rule.gate))
        w.step.copy_(torch.where(going_on, following, w.step))
        stopping = w.in_flight & ~going_on
        w.in_block.copy_(going_on)
        return stopping

    def _emit(self, w: _Workload, logits: torch.Tensor, emitting: torch.Tensor) -> None:
        """The ``emitting`` rows choose their next token from ``logits`` (B, V) and store it."""
        cols = torch.where(emitting, w.emitted, w.new_tokens)  # column N: the dump
        token = choose_tokens(logits, w.forced, w.all_rows, cols)
        w.tokens[w.all_rows, cols] = token
        if w.logits is not None:
            w.logits[w.all_rows, cols] = logits
        w.emissions.index_copy_(0, w.iteration, emitting.unsqueeze(0))
        w.emitted += emitting.long()
        w.current.copy_(torch.where(emitting, token, w.current))

    def _exit(self, w: _Workload, stopping: torch.Tensor) -> None:
        """Post-block layers, norm and head; the ``stopping`` rows emit."""
        model = self.model
        x = self._outside(w, "post", w.state, stopping)
        x = model.norm(x)[:, 0]  # (B, D)
        self._emit(w, model.lm_head(x) if model.lm_head is not None else F.linear(x, model.embed.weight), stopping)

    def _enter(self, w: _Workload, entering: torch.Tensor) -> None:
        """The ``entering`` rows' fed tokens through the pre-block layers into step 0."""
        B = w.batch_size
        w.position.copy_(torch.where(entering, w.prompt_len + w.emitted - 1, w.position))
        x = self._outside(w, "pre", self.model.embed(w.current).unsqueeze(1), entering)  # (B, 1, D)
        w.state.copy_(torch.where(entering.view(B, 1, 1), x, w.state))
        w.step.masked_fill_(entering, 0)
        w.in_flight |= entering
        if not self.schedule.num_block_steps:
            return
        before = [t.clone() for t in w.rule.state()]
        w.rule.enter(w.all_rows, x)
        keep, gate = w.rule.decision(0, w.all_rows, x)
        if gate is not None:
            w.rule.gate.copy_(gate)
        for tensor, old in zip(w.rule.state(), before, strict=True):  # rows not entering keep theirs
            tensor.copy_(torch.where(entering.view(-1, *[1] * (tensor.dim() - 1)), tensor, old))
        w.in_block.copy_(torch.where(entering, True if keep is None else keep, w.in_block))

    def _start(self, w: _Workload) -> None:
        """The prefill's token of every row, then its entry."""
        everyone = torch.ones_like(w.in_flight)
        self._emit(w, w.first_logits, everyone)
        self._enter(w, everyone & (w.emitted < w.new_tokens))

    def _iteration(self, w: _Workload) -> None:
        w.iteration += 1
        if self.schedule.num_block_steps:
            self._block(w)
        stopping = self._decide(w)
        w.in_flight &= ~stopping
        self._exit(w, stopping)
        self._enter(w, stopping & (w.emitted < w.new_tokens))

    # --- generation -----------------------------------------------------------------------------

    def _workload(self, cache: KVCache, new_tokens: int, keep_logits: bool, forced: bool) -> _Workload:
        """This generation's static buffers, holding the prefill's K/V (reused when the layout repeats)."""
        _, filled = prefill_lengths(self.model, cache)
        key = (cache.batch_size, new_tokens, tuple(filled.items()), keep_logits, forced)
        if key != self.workload_key or self.workload is None:
            self.workload = None  # free the old buffers and graphs first
            self.workload = _Workload(self.model, cache, filled, new_tokens, keep_logits, forced)
            self.workload_key = key
        self.workload.adopt(cache)
        return self.workload

    @torch.inference_mode()
    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        forced: torch.Tensor | None = None,
        keep_logits: bool = False,
        on_iteration: Callable[[], None] | None = None,
        on_prefill: Callable[[], None] | None = None,
    ) -> Generation:
        """Greedy (or forced) generation of ``new_tokens`` after ``prompt`` (B, P)."""
        N = new_tokens
        B, P = prompt.shape
        cache, logits = self.prefill(prompt, on_prefill)  # (B, V)
        w = self._workload(cache, N, keep_logits, forced is not None)
        del cache
        w.first_logits.copy_(logits)
        if w.forced is not None and forced is not None:
            w.forced[:, :N] = forced
        for tensor in (w.emitted, w.iteration, w.step_tokens, w.emissions, w.in_flight, w.in_block):
            tensor.zero_()
        w.prompt_len.fill_(P)
        run_graphed(w.graphs, w.pool, "start", lambda: self._start(w))
        if on_iteration is not None:
            on_iteration()
        iterations = 0
        while True:
            behind = N - int(w.emitted.min())  # tokens the furthest-behind row still needs: one sync
            if not behind:
                break
            for _ in range(behind):  # each token takes at least one iteration: none is wasted
                run_graphed(w.graphs, w.pool, "iteration", lambda: self._iteration(w))
                iterations += 1
                if on_iteration is not None:
                    on_iteration()
        emissions = w.emissions[: iterations + 1].cpu()
        return Generation(
            tokens=w.tokens[:, :N].clone(),
            logits=None if w.logits is None else w.logits[:, :N].clone(),
            emissions=[row.nonzero().flatten().tolist() for row in emissions],
            step_tokens=w.step_tokens.tolist(),
            cache_bytes=w.allocated_bytes(),
            block_calls=iterations if self.schedule.num_block_steps else 0,
        )
