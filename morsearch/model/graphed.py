"""Lockstep MoR decoding with every shape fixed, replayed as CUDA graphs on the GPU.

Eager decoding of these models is bound by the host: a decode step launches over
a thousand small kernels from Python, and the GPU waits for them (docs/DECODING.md).
This decoder keeps the lockstep schedule of ``decoding.LockstepDecoder`` (every
sequence decodes token t together; recursion step r runs only on the rows still
active at r) but keeps every decision on the device and every shape static, so
that each part of a decode step is captured once as a CUDA graph and replayed:

    enter          embedding, pre-block layers, router entry, step-0 decision (all rows)
    step (r, b)    recursion step r on a bucket of b rows: the rows active at r,
                   padded to b with a scratch row; the decision for step r+1
    exit           post-block layers, norm, head, next token (all rows)

Before a step whose rows depend on the routers, the host reads one number, how
many rows go on, to pick the bucket (the smallest size >= that count): the only
host-device sync of a decode step, once per routed recursion step. Padding rows
point at row B of every buffer, a scratch row whose results are never read.

K/V buffers are allocated once per workload at their final size (the prefill's
entries plus one per new token), since a captured graph needs fixed addresses. A
recursion-wise slot of a deep step therefore holds room for every new token, not
only the ones that reach it: more than the chunked growth of the row decoders
(``cache_bytes`` reports what is allocated). Graphs and buffers are kept between
``generate`` calls of the same workload, so a warm-up generation pays the capture.

On the CPU the same functions run eagerly, without graphs: the tests check their
outputs against the reference decoder's for every router and KV strategy.

Shape legend: B batch, b rows of a bucket, D d_model, H query heads, G key/value
heads, E head size, C slot capacity, N new tokens, V vocabulary.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from morsearch.model.decoding import DECODE_RULES, Generation, choose_tokens
from morsearch.model.kv_cache import KVCache, shared_source, writes_own_kv
from morsearch.model.layers import apply_rope
from morsearch.model.mor import MoRModel
from morsearch.model.routers import WidthPlan
from morsearch.model.sharing import Application

Family = Hashable  # "pre", "post" or a recursion step: slots written by the same tokens


def bucket_sizes(batch_size: int) -> list[int]:
    """Row counts a step graph is captured for: powers of two, then eighths of the batch."""
    eighth = max(8, math.ceil(batch_size / 8))
    sizes = {min(batch_size, 2**k) for k in range(batch_size.bit_length() + 1)}
    return sorted(sizes | set(range(eighth, batch_size, eighth)) | {batch_size})


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per row and head, q (n, H, 1, E), over (n, G, C, E) with a mask (n, 1, 1, C).

    A K/V group's H/G query heads become its queries, so two batched matmuls read each
    K/V entry once (SDPA with a mask and grouped heads repeats them H/G times). Used by
    ``graphed_depthwise``; in ``graphed`` it was slower than SDPA on an H200, for reasons
    not yet found (docs/DECODING.md). Returns (n, G, H/G, E): head-major.
    ``mask``: bool (True = attend) or additive float.
    """
    n, H, _, E = q.shape
    G = keys.shape[1]
    scores = torch.matmul(q.reshape(n, G, H // G, E) * E**-0.5, keys.transpose(-1, -2)).float()  # (n, G, H/G, C)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(scores.softmax(dim=-1).to(values.dtype), values)


@dataclass
class _Lengths:
    """Entries per row of every slot of one family (B+1,), and the family's capacity C."""

    device: torch.Tensor
    capacity: int


@dataclass
class _Read:
    """How one call's rows write and read the slots of one family."""

    cols: torch.Tensor | None  # (n,) entry each row writes; None: the call only reads
    mask: torch.Tensor  # (n or B+1, 1, 1, C) valid entries
    dense: bool  # attend over all B+1 rows in place, then pick the call's rows


class _Workload:
    """The static buffers (and, on CUDA, the graphs) of one batch size, length and cache layout."""

    def __init__(
        self,
        model: MoRModel,
        cache: KVCache,
        capacities: dict[Family, int],
        new_tokens: int,
        keep_logits: bool,
        forced: bool,
    ) -> None:
        cfg, like = model.cfg, model.embed.weight
        B = cache.batch_size
        rows = B + 1  # the last row is the scratch row that padding points at
        self.batch_size = B
        self.all_rows = torch.arange(B, device=like.device)
        self.lengths = {
            family: _Lengths(torch.zeros(rows, dtype=torch.long, device=like.device), capacity)
            for family, capacity in capacities.items()
        }
        self.families = {app: family_of(model, app) for app in cache.slots}
        self.keys: dict[Application, torch.Tensor] = {}  # (B+1, G, C, E)
        self.values: dict[Application, torch.Tensor] = {}
        for app, slot in cache.slots.items():  # one slot at a time, freeing the prefill's copy
            shape = (rows, cfg.kv_heads, self.lengths[self.families[app]].capacity, cfg.head_dim)
            self.keys[app], self.values[app] = like.new_zeros(shape), like.new_zeros(shape)
            self.adopt(app, slot.keys, slot.values)
            slot.keys = slot.values = None
        self.state = like.new_zeros(rows, 1, cfg.d_model)  # hidden state of each row's token
        self.rule = DECODE_RULES[cfg.router](model, rows, self.state)
        self.active = torch.zeros(rows, dtype=torch.bool, device=like.device)  # rows running the next step
        self.count = torch.zeros((), dtype=torch.long, device=like.device)  # how many
        self.step_tokens = torch.zeros(model.schedule.num_block_steps, dtype=torch.long, device=like.device)
        self.current = torch.zeros(B, dtype=torch.long, device=like.device)  # token each row feeds next
        self.position = torch.zeros(1, dtype=torch.long, device=like.device)  # its position
        self.emitted = torch.zeros(1, dtype=torch.long, device=like.device)  # tokens emitted per row
        self.tokens = torch.zeros(B, new_tokens, dtype=torch.long, device=like.device)
        self.logits = like.new_zeros(B, new_tokens, cfg.vocab_size) if keep_logits else None
        self.forced = torch.zeros(B, new_tokens, dtype=torch.long, device=like.device) if forced else None
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        # which steps' rows depend on the routers (learned on the first, eager, run)
        self.routed: dict[int, bool] = {}
        # Every graph's intermediates die inside it and all state lives in the buffers
        # above, so the graphs can share one memory pool (replayed one at a time).
        self.pool = torch.cuda.graph_pool_handle() if like.is_cuda else None

    def adopt(self, app: Application, keys: torch.Tensor | None, values: torch.Tensor | None) -> None:
        """Copy a prefill slot's K/V (B, G, >= used, E) into the static buffers."""
        if keys is None or values is None:
            return
        used = min(keys.shape[2], self.keys[app].shape[2])
        self.keys[app][: self.batch_size, :, :used] = keys[:, :, :used]
        self.values[app][: self.batch_size, :, :used] = values[:, :, :used]

    def allocated_bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys.values(), self.values.values(), strict=True))


def family_of(model: MoRModel, app: Application) -> Family:
    """The slots an application's K/V share their lengths with: pre-block, post-block, or its step."""
    schedule = model.schedule
    if app in schedule.pre_block:
        return "pre"
    if app in schedule.post_block:
        return "post"
    return app[1]


def prefill_lengths(model: MoRModel, cache: KVCache) -> tuple[dict[Family, torch.Tensor | None], dict[Family, int]]:
    """Each K/V family's prefill lengths (B,), None where never written, and their longest (0), in one sync."""
    lengths: dict[Family, torch.Tensor | None] = {}
    for app, slot in cache.slots.items():
        family = family_of(model, app)
        if lengths.get(family) is None:  # equal within a family: the first written one stands for all
            lengths[family] = slot.lengths
    written = [family for family, t in lengths.items() if t is not None]
    longest = torch.stack([lengths[f] for f in written]).amax(dim=1).tolist() if written else []
    filled = dict.fromkeys(lengths, 0)
    filled.update(zip(written, longest, strict=True))
    return lengths, filled


class CapturedPrefill:
    """The prompt's forward into a KV cache, replayed as one CUDA graph once its shape repeats.

    A routed prefill's shapes follow its routing: how many tokens take each recursion
    step, which ``compact`` learns with one host sync per routed step. The first prefill
    of a prompt shape runs eagerly; the second too, noting those widths (``WidthPlan``),
    and after it (once ``on_prefill`` has taken the prefill's time) the forward is
    captured with the widths fixed. From then on a prompt of that shape is copied into
    the graph's input and replayed: one launch, no sync, so the prefill's time is the
    device's work rather than Python's. After ``on_prefill`` the replay is checked: if
    the prompt asked for other widths, it is prefilled eagerly again and captured anew
    with its widths. On the CPU every prefill is eager.

    The first prefill of a shape never captures, so a decoder's first generation
    allocates only what an eager prefill does (``measure()`` monitors its memory on it).
    """

    def __init__(self, model: MoRModel) -> None:
        self.model = model
        self.seen: torch.Size | None = None  # the last eager prompt's shape
        self.pending: WidthPlan | None = None  # widths of a prefill to capture after ``on_prefill``
        self.graph: torch.cuda.CUDAGraph | None = None
        self.prompt = self.cache = self.logits = self.observed = self.planned = None

    def __call__(
        self, prompt: torch.Tensor, on_prefill: Callable[[], None] | None = None
    ) -> tuple[KVCache, torch.Tensor]:
        """The filled cache and the last position's logits (B, V); ``on_prefill`` is called
        once the prompt's forward is queued. A replay's cache is a view of the graph's own:
        its slots may be emptied, its tensors must not be written."""
        replay = self.graph is not None and self.prompt is not None and prompt.shape == self.prompt.shape
        if replay:
            self.prompt.copy_(prompt)
            self.graph.replay()
            cache, logits = view_of(self.cache), self.logits
        else:
            cache, logits = self._eager(prompt)
        if on_prefill is not None:
            on_prefill()
        if replay and not torch.equal(self.observed, self.planned):  # this prompt routes to other shapes
            self.graph = None
            cache, logits = self._eager(prompt)
        if self.pending is not None:
            self._capture(prompt, self.pending)
            self.pending = None
        return cache, logits

    def _eager(self, prompt: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
        cache, plan = self.model.new_cache(prompt.shape[0]), WidthPlan()
        with plan.recording():
            logits = self.model(prompt, cache=cache, last_only=True).logits[:, -1]
        self.pending = plan if prompt.is_cuda and prompt.shape == self.seen else None
        self.seen = prompt.shape
        return cache, logits

    def _capture(self, prompt: torch.Tensor, plan: WidthPlan) -> None:
        self.graph = None  # free the previous graph's pool first
        self.prompt, self.cache = prompt.clone(), self.model.new_cache(prompt.shape[0])
        self.planned = torch.tensor(plan.widths, dtype=torch.long, device=prompt.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), plan.replaying():  # records the kernels, runs none
            self.logits = self.model(self.prompt, cache=self.cache, last_only=True).logits[:, -1]
            observed = plan.observed
            self.observed = torch.stack(observed) if observed else self.planned.new_zeros(0)
        self.graph = graph


def view_of(cache: KVCache) -> KVCache:
    """A cache object over the same tensors, whose slots a decoder may empty as it adopts them."""
    view = copy.copy(cache)
    view.slots = {app: copy.copy(slot) for app, slot in cache.slots.items()}
    return view


def compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(function)``, with room for the recompilations a decoder needs.

    Dynamo keys its compilations on the code object, so every decoder instance, workload
    and kind of call adds one for the same method; past the default limit of 8 it falls
    back to eager with one logged warning, and a benchmark would time that.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(function)


def run_graphed(
    graphs: dict[Hashable, torch.cuda.CUDAGraph],
    pool: tuple[int, int] | None,
    key: Hashable,
    part: Callable[[], bool | None],
) -> bool | None:
    """Run one part of a step: eagerly the first time (always on the CPU), then as its CUDA graph.

    ``pool`` is the workload's graph memory pool (None: no graphs, the CPU); the eager
    first run is the real work of that call and the warm-up of the capture.
    """
    graph = graphs.get(key)
    if graph is not None:
        graph.replay()
        return None
    result = part()
    if pool is not None:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):  # records the kernels, runs none
            part()
        graphs[key] = graph
    return result


class GraphedDecoder:
    """Lockstep decoding from static buffers; CUDA graphs on the GPU (module docstring).

    Args:
        model: The model to decode with (eval mode).
        compile: ``torch.compile`` the layer calls before they are captured, so that a
            layer's small elementwise kernels are fused (an experiment: it costs seconds
            to minutes of compilation per workload, and its speed was not measured yet).
    """

    def __init__(self, model: MoRModel, compile: bool = False) -> None:
        self.model, self.cfg, self.schedule = model, model.cfg, model.schedule
        self.prefill = CapturedPrefill(model)
        self.workload: _Workload | None = None
        self.workload_key: tuple[object, ...] | None = None
        if compile:
            # one graph per kind of call (enter, each step, exit), then one with dynamic
            # row counts per kind once a second bucket appears
            self._layers = compiled(self._layers)  # type: ignore[method-assign]

    # --- one call's rows: where they write, what they read ------------------------------------

    def _plan(self, w: _Workload, family: Family, rows: torch.Tensor | None, writes: bool) -> _Read:
        """Advance the family's lengths for ``rows`` (None: all B, in order) if they write; their read."""
        B, lengths = w.batch_size, w.lengths[family]
        cols = None
        if writes:
            cols = lengths.device[w.all_rows if rows is None else rows]  # a gather: a copy
            if rows is None:
                lengths.device[:B] += 1
            else:
                lengths.device[rows] = cols + 1
                lengths.device[B:].zero_()  # the scratch row always writes entry 0 (a slice: capturable)
        dense = rows is not None and 3 * rows.shape[0] >= B + 1  # over a third of the rows: read in place
        if rows is None:
            valid = lengths.device[:B]
        else:
            valid = lengths.device if dense else lengths.device[rows]
        mask = torch.arange(lengths.capacity, device=valid.device) < valid.unsqueeze(1)
        mask |= ~mask.any(dim=-1, keepdim=True)  # a row with no entries (scratch): no NaN
        return _Read(cols, mask.view(-1, 1, 1, lengths.capacity), dense)

    def _layers(
        self, w: _Workload, applications: tuple[Application, ...], x: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """The layer applications on x (n, 1, D) of ``rows`` (None: all B, in order), all at one step."""
        model, B = self.model, w.batch_size
        index = w.all_rows if rows is None else rows
        rope = model.rope(w.position.view(1, 1))  # lockstep: one position for every row
        plans: dict[Family, _Read] = {}
        for app in applications:
            layer = model.layers[app[0]]
            attn, n = layer.attn, x.shape[0]
            H, G, E = attn.num_heads, attn.num_kv_heads, attn.head_dim
            writes = writes_own_kv(self.cfg, app)
            source = app if writes else shared_source(app)
            family = w.families[source]
            if family not in plans:
                plans[family] = self._plan(w, family, rows, writes)
            read = plans[family]
            a = layer.attn_norm(x)
            q = attn.q_proj(a).view(n, 1, H, E).transpose(1, 2)  # (n, H, 1, E)
            if writes:
                assert read.cols is not None
                k = attn.k_proj(a).view(n, 1, G, E).transpose(1, 2)  # (n, G, 1, E)
                qk = apply_rope(torch.cat((q, k), dim=1), *rope)
                q = qk[:, :H]
                w.keys[app][index, :, read.cols] = qk[:, H:, 0]
                w.values[app][index, :, read.cols] = attn.v_proj(a).view(n, G, E)
            else:
                q = apply_rope(q, *rope)
            keys, values = w.keys[source], w.values[source]  # (B+1, G, C, E)
            # SDPA (its math kernels, with the mask): decode_attention was 1.5-3x slower here on
            # an H200 (benchmarks/results/decode_throughput_matmul_attention.json)
            if rows is None:  # every row but the scratch one: the leading slice, no copy
                out = F.scaled_dot_product_attention(q, keys[:B], values[:B], attn_mask=read.mask, enable_gqa=H != G)
            elif read.dense:  # queries of the other rows are zeros, their outputs dropped
                q_all = q.new_zeros(B + 1, H, 1, E).index_copy_(0, rows, q)
                out = F.scaled_dot_product_attention(q_all, keys, values, attn_mask=read.mask, enable_gqa=H != G)
                out = out[rows]
            else:
                out = F.scaled_dot_product_attention(
                    q, keys[rows], values[rows], attn_mask=read.mask, enable_gqa=H != G
                )
            x = x + attn.o_proj(out.transpose(1, 2).reshape(n, 1, H * E))
            x = x + layer.mlp(layer.mlp_norm(x))
        return x

    def _set_active(self, w: _Workload, rows: torch.Tensor, keep: torch.Tensor | None, valid: torch.Tensor) -> None:
        """Rows that run the next step: the valid ``rows`` the router keeps (all if None)."""
        w.active.zero_()
        w.active[rows] = valid if keep is None else keep & valid
        w.active[w.batch_size :].zero_()
        w.count.copy_(w.active.sum())

    # --- the three parts of a decode step (each one graph) --------------------------------------

    def _enter(self, w: _Workload) -> bool:
        """The fed tokens through the pre-block layers into step 0; True if routers pick its rows."""
        x = self.model.embed(w.current).unsqueeze(1)  # (B, 1, D)
        x = self._layers(w, self.schedule.pre_block, x, None)
        w.state[: w.batch_size] = x
        if not self.schedule.num_block_steps:
            return False
        w.rule.enter(w.all_rows, x)
        keep = w.rule.decide(0, w.all_rows, x)
        if keep is None:  # every row runs step 0: no active set to keep
            return False
        self._set_active(w, w.all_rows, keep, torch.ones_like(keep))
        return True

    def _step(self, w: _Workload, step: int, size: int | None) -> bool:
        """Recursion ``step`` on the first ``size`` active rows, padded (None: every row, before
        any router chose); True if the routers pick the rows of step+1."""
        B = w.batch_size
        if size is None:
            rows, valid = None, None
            h_in = w.state[:B]
            w.step_tokens[step] += B
        else:  # the active rows in order, then the scratch row: each active row's rank is its place
            rank = torch.cumsum(w.active[:B], dim=0) - 1
            place = torch.where(w.active[:B] & (rank < size), rank, size)  # the rest land in a dump entry
            picked = torch.full((size + 1,), B, dtype=torch.long, device=rank.device).scatter_(0, place, w.all_rows)
            rows = picked[:size]
            valid = torch.arange(size, device=rows.device) < w.count
            w.step_tokens[step] += w.count
            h_in = w.state[rows]  # (b, 1, D)
        index = w.all_rows if rows is None else rows
        out = self._layers(w, tuple((layer, step) for layer in self.schedule.block), h_in, rows)
        h = w.rule.merge(index, step, h_in, out)
        w.state[index] = h
        if step + 1 == self.schedule.num_block_steps:
            return False
        keep = w.rule.decide(step + 1, index, h)
        if keep is None and valid is None:  # every row runs the next step too
            return False
        self._set_active(w, index, keep, torch.ones_like(index, dtype=torch.bool) if valid is None else valid)
        return keep is not None

    def _exit(self, w: _Workload) -> None:
        """Post-block layers, norm and head for every row; emit and feed the next token."""
        model, B = self.model, w.batch_size
        x = self._layers(w, self.schedule.post_block, w.state[:B], None)
        x = model.norm(x)[:, 0]  # (B, D)
        self._emit(w, model.lm_head(x) if model.lm_head is not None else F.linear(x, model.embed.weight))
        w.position += 1

    def _emit(self, w: _Workload, logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits (B, V) and store it."""
        cols = w.emitted.expand(w.batch_size)
        token = choose_tokens(logits, w.forced, w.all_rows, cols)
        w.tokens.index_copy_(1, w.emitted, token.unsqueeze(1))
        if w.logits is not None:
            w.logits.index_copy_(1, w.emitted, logits.unsqueeze(1))
        w.current.copy_(token)
        w.emitted += 1

    # --- generation -----------------------------------------------------------------------------

    def _workload(self, cache: KVCache, new_tokens: int, keep_logits: bool, forced: bool) -> _Workload:
        """This generation's static buffers, holding the prefill's K/V (reused when the layout repeats)."""
        model = self.model
        lengths, filled = prefill_lengths(model, cache)
        capacities = {family: filled[family] + new_tokens - 1 for family in filled}
        key = (cache.batch_size, new_tokens, tuple(capacities.items()), keep_logits, forced)
        if key == self.workload_key and self.workload is not None:
            w = self.workload
            for app, slot in cache.slots.items():
                w.adopt(app, slot.keys, slot.values)
                slot.keys = slot.values = None
        else:
            self.workload = None  # free the old buffers and graphs first
            w = self.workload = _Workload(model, cache, capacities, new_tokens, keep_logits, forced)
            self.workload_key = key
        B = cache.batch_size
        for family, prefilled in lengths.items():
            w.lengths[family].device.zero_()
            if prefilled is not None:
                w.lengths[family].device[:B] = prefilled
        return w

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
        nr = self.schedule.num_block_steps
        B, P = prompt.shape
        cache, first_logits = self.prefill(prompt, on_prefill)  # (B, V)
        w = self._workload(cache, new_tokens, keep_logits, forced is not None)
        del cache
        if w.forced is not None and forced is not None:
            w.forced.copy_(forced)
        w.emitted.zero_()
        w.position.fill_(P)
        w.step_tokens.zero_()
        self._emit(w, first_logits)
        if on_iteration is not None:
            on_iteration()
        sizes, block_calls = bucket_sizes(B), 0
        for _ in range(new_tokens - 1):
            routed = run_graphed(w.graphs, w.pool, "enter", lambda: self._enter(w))
            if routed is not None:
                w.routed[0] = routed
            everyone = True  # no router has chosen rows yet: every row runs, no picking
            for step in range(nr):
                size: int | None = None
                if w.routed[step]:
                    everyone = False
                    count = int(w.count)  # the decode step's one host sync per routed step
                    if count == 0:
                        break  # routing is nested: no token reaches a deeper step either
                    size = next(s for s in sizes if s >= count)
                elif not everyone:  # the rows of the step before, without a new choice
                    size = B
                routed = run_graphed(
                    w.graphs, w.pool, (step, size), lambda step=step, size=size: self._step(w, step, size)
                )
                if routed is not None:
                    w.routed[step + 1] = routed
                block_calls += 1
            run_graphed(w.graphs, w.pool, "exit", lambda: self._exit(w))
            if on_iteration is not None:
                on_iteration()
        return Generation(
            tokens=w.tokens.clone(),
            logits=None if w.logits is None else w.logits.clone(),
            emissions=[list(range(B))] * new_tokens,
            step_tokens=w.step_tokens.tolist(),
            cache_bytes=w.allocated_bytes(),
            block_calls=block_calls,
        )
