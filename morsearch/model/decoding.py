"""Fast MoR decoding: the shared block runs only for the tokens still active at a step.

``MoRModel.forward(..., cache=...)`` is the reference decoder. In a decode step each
sequence has one token, so its per-step gather along the token axis keeps every
batch row (an inactive row is padding): every token pays for every recursion step.
The decoders here gather along the *batch* axis instead, and go on to continuous
depth-wise batching (docs/DECODING.md has the design and the measurements):

    lockstep   all sequences decode token t together; at step r the block runs on
               the rows whose token is still active at r; the rest wait.
    depthwise  every sequence advances on its own. One iteration = one shared-block
               call over every in-flight token, whatever its recursion step:

                   iteration i:   seq0 step 2 | seq1 step 0 | seq2 step 1 | seq3 step 0
                                  \\________ one call: q/k/v/o + MLP batched, ________/
                                            attention per (layer, step) slot

               A token that stops (router says so, or step Nr) is finished in the
               same iteration (post-block layers, norm, head, next token, embedding,
               pre-block layers) and its sequence's next token joins the next call
               at step 0, so early exits leave no bubbles.

Each sequence has at most one token in flight, so a sequence's K/V are written in
position order, and the computation of a sequence does not depend on which other
rows share its calls: outputs equal the reference's (tests/measure_tests).

KV strategies follow ``kv_cache.py``: under recursion-wise caching a token writes the
slot (layer, step) of every step it runs and attends to that slot only; under
recursive sharing only step 0 projects and writes K/V and deeper steps read it.

Shape legend: B batch (sequences), n rows in one call, D d_model, H query heads,
G key/value heads, E head size, S cached length, V vocabulary, N new tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from morsearch.config import ModelConfig
from morsearch.model.kv_cache import CacheSlot, KVCache, shared_source, writes_own_kv
from morsearch.model.layers import TransformerLayer, apply_rope
from morsearch.model.mor import MoRModel
from morsearch.model.sharing import Application, layer_schedule


@dataclass
class Generation:
    """What one ``generate`` call produced and how.

    Attributes:
        tokens: (B, N) generated tokens; token 0 comes from the prefill.
        logits: (B, N, V) the logits each token was chosen from (``keep_logits=True``).
        emissions: Per iteration (0 = the prefill), the rows that emitted a token; a decoder
            calls ``on_iteration`` once after each iteration, so marks and entries align.
            It calls ``on_prefill`` once before that, as soon as the prompt's forward is
            queued: what comes between the two is the decoder's own set-up (taking over
            the prefill's K/V), which ``measure()`` times as neither prefill nor decode.
        step_tokens: Decoded tokens that ran each recursion step (prompt excluded).
        cache_bytes: Bytes the KV cache held on its device at the end.
        block_calls: Shared-block calls made while decoding (each runs every block layer).
    """

    tokens: torch.Tensor
    logits: torch.Tensor | None
    emissions: list[list[int]] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    cache_bytes: int = 0
    block_calls: int = 0


def choose_tokens(
    logits: torch.Tensor, forced: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Greedy next tokens (n,), or the forced ones (teacher forcing, for tests)."""
    return forced[rows, cols] if forced is not None else logits.argmax(dim=-1)


class ReferenceDecoder:
    """The model's own forward, one (B, 1) call per token: every row runs every step."""

    def __init__(self, model: MoRModel) -> None:
        self.model = model

    @torch.no_grad()
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
        B = prompt.shape[0]
        cache = self.model.new_cache(B)
        rows = torch.arange(B, device=prompt.device)
        out = self.model(prompt, cache=cache, last_only=True)
        if on_prefill is not None:
            on_prefill()
        tokens, kept = [], []
        steps = torch.zeros(self.model.schedule.num_block_steps, device=prompt.device)
        for t in range(new_tokens):
            if t > 0:
                out = self.model(tokens[-1][:, None], cache=cache)
                steps += out.step_token_fraction * B
            logits = out.logits[:, -1]  # (B, V)
            tokens.append(choose_tokens(logits, forced, rows, torch.full_like(rows, t)))
            if keep_logits:
                kept.append(logits)
            if on_iteration is not None:
                on_iteration()
        return Generation(
            tokens=torch.stack(tokens, dim=1),
            logits=torch.stack(kept, dim=1) if keep_logits else None,
            emissions=[list(range(B))] * new_tokens,
            step_tokens=[round(x) for x in steps.tolist()],
            cache_bytes=cache.allocated_bytes(),
            block_calls=(new_tokens - 1) * len(steps),
        )


# --- decode-time routing: per-token decisions, mirroring routers.py in eval mode ---------------


class DecodeRule:
    """How one router kind decides, per token, whether it runs a step, and merges the output.

    State lives in (B, ...) tensors indexed by batch row, so rows at different
    recursion steps can share a call. ``rows`` are device indices of the call's rows.
    """

    def __init__(self, model: MoRModel, batch_size: int, like: torch.Tensor) -> None:
        self.model, self.cfg = model, model.cfg
        self.gate = like.new_zeros(batch_size)  # (B,) gate of the step a row runs next

    def state(self) -> list[torch.Tensor]:
        """The per-row tensors (B, ...) that ``enter`` and ``decide`` write."""
        return [self.gate]

    def enter(self, rows: torch.Tensor, h: torch.Tensor) -> None:
        """``h`` (n, 1, D) enters the first recursion step."""

    def decision(
        self, steps: torch.Tensor | int, rows: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Whether each row runs its step (``steps``: one for all, or (n,)), and the gate it runs
        with: (n,) bool or None = all do; (n,) gates or None = unchanged. Writes nothing."""
        return None, None

    def decide(self, step: int, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """Whether each row (all at ``step``) runs it: (n,) bool, or None = all do; sets their gates."""
        keep, gate = self.decision(step, rows, h)
        if gate is not None:
            self.gate[rows] = gate
        return keep

    def merge(
        self, rows: torch.Tensor, steps: torch.Tensor | int, h_in: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """New states (n, 1, D) of rows that ran the block at ``steps`` (n,), or all at one step."""
        return out


class ExpertChoiceRule(DecodeRule):
    """Step r's router thresholds its logit at 0 (sigmoid 0.5); kept: h + alpha*G*Block(h)."""

    def __init__(self, model: MoRModel, batch_size: int, like: torch.Tensor) -> None:
        super().__init__(model, batch_size, like)
        capacities = torch.tensor(model.cfg.step_capacities, device=like.device)
        self.capped = capacities < 1.0  # (Nr,) steps whose router drops tokens (capacity 1 keeps all)

    def decision(
        self, steps: torch.Tensor | int, rows: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        networks = self.model.router.networks
        if isinstance(steps, int):
            logits = networks[steps](h).reshape(-1).float()  # (n,)
            keep = logits > 0 if self.cfg.step_capacities[steps] < 1.0 else None
        else:  # rows at different steps: every step's router on every row (they are tiny), then pick
            every = torch.stack([network(h).reshape(-1) for network in networks], dim=1).float()  # (n, Nr)
            logits = every.gather(1, steps.unsqueeze(1))[:, 0]
            keep = (logits > 0) | ~self.capped[steps]
        activation = torch.sigmoid if self.cfg.gate == "sigmoid" else torch.tanh
        return keep, (self.cfg.alpha * activation(logits)).to(self.gate.dtype)

    def merge(
        self, rows: torch.Tensor, steps: torch.Tensor | int, h_in: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        return h_in + self.gate[rows].view(-1, 1, 1) * out


class TokenChoiceRule(DecodeRule):
    """One router picks the depth at entry; the last step gives H1 + g * Block(h)."""

    def __init__(self, model: MoRModel, batch_size: int, like: torch.Tensor) -> None:
        super().__init__(model, batch_size, like)
        self.depth = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        self.first = like.new_zeros(batch_size, 1, model.cfg.d_model)  # H1 of each row's token

    def enter(self, rows: torch.Tensor, h: torch.Tensor) -> None:
        router, cfg = self.model.router, self.cfg
        logits = router.network(h).float()  # (n, 1, Nr)
        if cfg.gate == "softmax":
            scores = cfg.alpha * logits.softmax(dim=-1)
        else:
            scores = cfg.alpha * torch.sigmoid(logits)
        biased = scores + router.balance_bias if cfg.balancing == "loss_free" else scores
        choice = biased.argmax(dim=-1)  # (n, 1)
        self.depth[rows] = choice[:, 0] + 1
        self.gate[rows] = scores.gather(-1, choice.unsqueeze(-1)).reshape(-1).to(self.gate.dtype)
        self.first[rows] = h

    def state(self) -> list[torch.Tensor]:
        return [self.gate, self.depth, self.first]

    def decision(
        self, steps: torch.Tensor | int, rows: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if isinstance(steps, int) and steps == 0:
            return None, None  # every depth is >= 1
        return self.depth[rows] > steps, None

    def merge(
        self, rows: torch.Tensor, steps: torch.Tensor | int, h_in: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        finishing = (self.depth[rows] == steps + 1).view(-1, 1, 1)
        return torch.where(finishing, self.first[rows] + self.gate[rows].view(-1, 1, 1) * out, out)


DECODE_RULES: dict[str, type[DecodeRule]] = {
    "none": DecodeRule,
    "expert_choice": ExpertChoiceRule,
    "token_choice": TokenChoiceRule,
}


# --- a KV cache addressed by batch row ---------------------------------------------------------


class Lengths:
    """Entries per batch row, on the host (shapes without a device sync) and on the device.

    Slots written by the same tokens (every layer of one recursion step) share one
    ``Lengths``, so the write positions and masks of a call are computed once for all.
    """

    def __init__(self, lengths: torch.Tensor, device: torch.device) -> None:
        self.host: list[int] = lengths.tolist()
        self.device = lengths.to(device)


@dataclass
class Plan:
    """Where one group of rows writes and what it reads in the slots of one ``Lengths``."""

    rows: torch.Tensor  # (n,) batch rows of the group
    cols: torch.Tensor | None  # (n,) entry each row writes (None: the group only reads)
    used: int  # entries read per row (the longest row)
    mask: torch.Tensor | None  # (n or B, 1, 1, used) valid entries; None: all valid
    dense: bool  # read every row of the slot in place, the caller picks its rows


def plan(lengths: Lengths, rows: list[int], rows_dev: torch.Tensor, writes: bool) -> Plan:
    """Advance ``lengths`` by one entry for ``rows`` if they write, and describe the read.

    Gathering a subset of rows copies their K/V, which costs about twice what
    attention reads; over a third of the rows, reading all rows in place is cheaper.
    """
    cols = None
    if writes:
        cols = lengths.device[rows_dev]
        lengths.device[rows_dev] = cols + 1
        for r in rows:
            lengths.host[r] += 1
    B = len(lengths.host)
    dense = 3 * len(rows) >= B
    read = lengths.host if dense else [lengths.host[r] for r in rows]
    used = max(read)
    if all(length == used for length in read):
        return Plan(rows_dev, cols, used, None, dense)
    valid = lengths.device if dense else lengths.device[rows_dev]
    mask = torch.arange(used, device=valid.device) < valid.unsqueeze(1)  # (n or B, used)
    return Plan(rows_dev, cols, used, mask.view(-1, 1, 1, used), dense)


class RowSlot:
    """K/V of one layer application (B, G, capacity, E), rows appended each at its own length.

    Storage grows in chunks (as ``CacheSlot``), so the bytes held follow the tokens
    really cached.
    """

    def __init__(self, slot: CacheSlot, lengths: Lengths, chunk_tokens: int) -> None:
        self.keys, self.values = slot.keys, slot.values  # adopted from the prefill's cache, no copy
        self.lengths = lengths
        self.shape = (slot.batch_size, slot.kv_heads, slot.head_dim)
        self.chunk_tokens = chunk_tokens

    def _reserve(self, needed: int, like: torch.Tensor) -> None:
        capacity = 0 if self.keys is None else self.keys.shape[2]
        if needed <= capacity:
            return
        B, G, E = self.shape
        size = -(-needed // self.chunk_tokens) * self.chunk_tokens
        keys, values = like.new_zeros(B, G, size, E), like.new_zeros(B, G, size, E)
        if self.keys is not None and self.values is not None:
            keys[:, :, :capacity] = self.keys
            values[:, :, :capacity] = self.values
        self.keys, self.values = keys, values

    def write(self, plan: Plan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (n, G, E) at the plan's entries."""
        self._reserve(max(self.lengths.host), k)
        assert self.keys is not None and self.values is not None and plan.cols is not None
        self.keys[plan.rows, :, plan.cols] = k
        self.values[plan.rows, :, plan.cols] = v

    def read(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys, values (n or B, G, used, E) as the plan says."""
        assert self.keys is not None and self.values is not None
        keys, values = self.keys[:, :, : plan.used], self.values[:, :, : plan.used]
        if plan.dense or plan.rows.shape[0] == self.shape[0]:
            return keys, values
        return keys[plan.rows], values[plan.rows]

    def allocated_bytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return self.keys.nbytes + self.values.nbytes


class RowCache:
    """Every slot of one model, adopted from the ``KVCache`` the prefill filled."""

    def __init__(self, cfg: ModelConfig, cache: KVCache, device: torch.device, chunk_tokens: int = 256) -> None:
        self.cfg = cfg
        # Slots written in the same call by the same rows (the pre-block layers; the
        # post-block ones; the layers of one recursion step) share one Lengths when
        # the prefill left them equal, so a call plans their writes and masks once.
        schedule = layer_schedule(cfg)
        phases = {app: "pre" for app in schedule.pre_block} | {app: "post" for app in schedule.post_block}
        shared: dict[tuple[object, ...], Lengths] = {}
        self.slots = {}
        for app, slot in cache.slots.items():
            lengths = slot.lengths if slot.lengths is not None else torch.zeros(slot.batch_size, dtype=torch.long)
            family = (phases.get(app, app[1]), *lengths.tolist())
            if family not in shared:
                shared[family] = Lengths(lengths, device)
            self.slots[app] = RowSlot(slot, shared[family], chunk_tokens)

    def slots_for(self, application: Application) -> tuple[RowSlot | None, RowSlot]:
        """(slot to write or None, slot to read), as ``KVCache.slots_for``."""
        if writes_own_kv(self.cfg, application):
            return self.slots[application], self.slots[application]
        return None, self.slots[shared_source(application)]

    def allocated_bytes(self) -> int:
        return sum(slot.allocated_bytes() for slot in self.slots.values())


@dataclass
class _Group:
    """Rows [start, stop) of a call that run the same recursion step."""

    start: int
    stop: int
    step: int
    rows: list[int]


class RowDecoder:
    """Decode by batch row: a step's block runs only on the rows active at it.

    ``barrier=True`` is the lockstep schedule, ``False`` continuous depth-wise
    batching (module docstring).
    """

    barrier = False
    exit_fraction = 0.0  # finish stopped tokens once this share of the batch waits (or the block is empty)

    def __init__(self, model: MoRModel) -> None:
        self.model, self.cfg, self.schedule = model, model.cfg, model.schedule

    def _plans(self, layer_index: int, groups: list[_Group], rows_dev: torch.Tensor, plans: dict) -> list[Plan]:
        """The plan of each group at this layer; computed once per ``Lengths``, group and call."""
        found = []
        for g in groups:
            write, read = self.cache.slots_for((layer_index, g.step))
            key = (id(read.lengths), g.start)
            if key not in plans:
                plans[key] = plan(read.lengths, g.rows, rows_dev[g.start : g.stop], write is not None)
            found.append(plans[key])
        return found

    def _layer(
        self,
        layer_index: int,
        x: torch.Tensor,
        groups: list[_Group],
        rows_dev: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        plans: dict,
    ) -> torch.Tensor:
        """Layer ``layer_index`` on x (n, 1, D): projections and MLP over all rows, attention per group."""
        layer: TransformerLayer = self.model.layers[layer_index]
        attn, n = layer.attn, x.shape[0]
        H, G, E = attn.num_heads, attn.num_kv_heads, attn.head_dim
        a = layer.attn_norm(x)
        q = attn.q_proj(a).view(n, 1, H, E).transpose(1, 2)  # (n, H, 1, E)
        slots = [self.cache.slots_for((layer_index, g.step)) for g in groups]
        group_plans = self._plans(layer_index, groups, rows_dev, plans)
        # Rows are sorted by step, so the rows that project K/V (all, or step 0 under
        # recursive sharing) are a leading slice: one k/v projection for all of them.
        writers = sum(g.stop - g.start for g, (write, _) in zip(groups, slots, strict=True) if write is not None)
        if writers:
            k = attn.k_proj(a[:writers]).view(writers, 1, G, E).transpose(1, 2)  # (w, G, 1, E)
            v = attn.v_proj(a[:writers]).view(writers, G, E)
            if writers == n:  # one RoPE call for queries and keys: fewer kernel launches
                qk = apply_rope(torch.cat((q, k), dim=1), *rope)
                q, k = qk[:, :H], qk[:, H:, 0]
            else:
                q = apply_rope(q, *rope)
                k = apply_rope(k, rope[0][:writers], rope[1][:writers])[:, :, 0]  # (w, G, E)
        else:
            q = apply_rope(q, *rope)
        outs = []
        for g, (write, read), p in zip(groups, slots, group_plans, strict=True):
            if write is not None:
                assert g.stop <= writers
                write.write(p, k[g.start : g.stop], v[g.start : g.stop])
            keys, values = read.read(p)
            q_g = q[g.start : g.stop]
            if p.dense and len(g.rows) < keys.shape[0]:  # queries of the other rows are zeros, outputs dropped
                q_g = q.new_zeros(keys.shape[0], H, 1, E).index_copy_(0, p.rows, q_g)
                out = F.scaled_dot_product_attention(q_g, keys, values, attn_mask=p.mask, enable_gqa=H != G)
                outs.append(out[p.rows])
            else:
                outs.append(F.scaled_dot_product_attention(q_g, keys, values, attn_mask=p.mask, enable_gqa=H != G))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (n, H, 1, E)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(n, 1, H * E))
        return x + layer.mlp(layer.mlp_norm(x))

    def _plain_layers(
        self, applications: tuple[Application, ...], x: torch.Tensor, rows: list[int], rows_dev: torch.Tensor
    ) -> torch.Tensor:
        """Pre- or post-block layers: every row of the call runs each of them."""
        rope = self.model.rope(self.positions[rows_dev].unsqueeze(1))
        plans: dict = {}
        for layer_index, step in applications:
            x = self._layer(layer_index, x, [_Group(0, len(rows), step, rows)], rows_dev, rope, plans)
        return x

    def _rows_dev(self, rows: list[int]) -> torch.Tensor:
        # A host list sent to the GPU waits for the queued kernels (pageable copy): a sync,
        # so callers reuse these tensors wherever the rows stay the same.
        return torch.tensor(rows, device=self.tokens.device)

    def _emit(self, rows: list[int], rows_dev: torch.Tensor, logits: torch.Tensor) -> None:
        """Choose the next token of ``rows`` from their logits (n, V)."""
        cols = self.emitted_dev[rows_dev]
        self.tokens[rows_dev, cols] = choose_tokens(logits, self.forced, rows_dev, cols)
        if self.logits_out is not None:
            self.logits_out[rows_dev, cols] = logits
        self.emitted_dev[rows_dev] = cols + 1
        for r in rows:
            self.emitted[r] += 1
        self.emissions[-1] += rows

    def _finish(self, rows: list[int]) -> tuple[list[int], torch.Tensor]:
        """Tokens that left the block: post-block layers, norm, head, next token.

        Returns the rows whose sequence wants another token, on the host and the device.
        """
        model = self.model
        rows_dev = self._rows_dev(rows)
        x = self._plain_layers(self.schedule.post_block, self.state[rows_dev], rows, rows_dev)
        x = model.norm(x)[:, 0]  # (n, D)
        self._emit(rows, rows_dev, model.lm_head(x) if model.lm_head is not None else F.linear(x, model.embed.weight))
        going_on = [r for r in rows if self.emitted[r] < self.tokens.shape[1]]
        return going_on, rows_dev if len(going_on) == len(rows) else self._rows_dev(going_on)

    def _begin(self, rows: list[int], rows_dev: torch.Tensor) -> list[int]:
        """The next token of ``rows``: embedding, pre-block layers, entry into step 0.

        Returns the rows whose token skips the whole block (to finish at once).
        """
        if not rows:
            return []
        model = self.model
        cols = self.emitted_dev[rows_dev] - 1
        self.positions[rows_dev] = self.prompt_len + cols
        x = model.embed(self.tokens[rows_dev, cols]).unsqueeze(1)  # (n, 1, D)
        x = self._plain_layers(self.schedule.pre_block, x, rows, rows_dev)
        self.state[rows_dev] = x
        if not self.schedule.num_block_steps:
            return rows
        self.rule.enter(rows_dev, x)
        keep = self.rule.decide(0, rows_dev, x)
        # step 0 keeps every token for all routers but an explicit capacity < 1: no sync
        flags = [True] * len(rows) if keep is None else keep.tolist()
        self.block.update((r, 0) for r, kept in zip(rows, flags, strict=True) if kept)
        return [r for r, kept in zip(rows, flags, strict=True) if not kept]

    def _block_call(self) -> list[int]:
        """One shared-block call over every in-flight token, grouped by recursion step.

        Updates ``self.block`` to the tokens that go on; returns the rows whose token stops.
        """
        model, block, nr = self.model, self.block, self.schedule.num_block_steps
        order = sorted(block, key=lambda r: (block[r], r))
        rows_dev = self._rows_dev(order)
        groups, start = [], 0
        for step in sorted(set(block.values())):
            rows = [r for r in order if block[r] == step]
            groups.append(_Group(start, start + len(rows), step, rows))
            self.step_tokens[step] += len(rows)
            start += len(rows)
        # one step (always under lockstep): a number broadcasts, and saves a copy to the device
        steps = groups[0].step if len(groups) == 1 else self._rows_dev([block[r] for r in order])
        self.block_calls += 1
        h_in = self.state[rows_dev]  # (n, 1, D)
        rope = model.rope(self.positions[rows_dev].unsqueeze(1))
        out, plans = h_in, {}
        for layer_index in self.schedule.block:
            out = self._layer(layer_index, out, groups, rows_dev, rope, plans)
        h = self.rule.merge(rows_dev, steps, h_in, out)
        self.state[rows_dev] = h
        decisions, stopped = [], []
        for g in groups:
            if g.step + 1 < nr:
                keep = self.rule.decide(g.step + 1, rows_dev[g.start : g.stop], h[g.start : g.stop])
                decisions.append((g, keep))
            else:
                stopped += g.rows
        kept = [keep for _, keep in decisions if keep is not None]
        flags = iter(torch.cat(kept).tolist() if kept else [])  # the iteration's one host sync
        self.block = {}
        for g, keep in decisions:
            for r in g.rows:
                if keep is None or next(flags):
                    self.block[r] = g.step + 1
                else:
                    stopped.append(r)
        return stopped

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        forced: torch.Tensor | None = None,
        keep_logits: bool = False,
        on_iteration: Callable[[], None] | None = None,
        on_prefill: Callable[[], None] | None = None,
    ) -> Generation:
        """Greedy (or forced) generation of ``new_tokens`` after ``prompt`` (B, P).

        Each iteration: one block call over the in-flight tokens; the tokens that stop
        are finished and their sequences' next tokens enter step 0 for the next call.
        """
        model, device = self.model, prompt.device
        B, self.prompt_len = prompt.shape
        prefill_cache = model.new_cache(B)
        first_logits = model(prompt, cache=prefill_cache, last_only=True).logits[:, -1]  # (B, V)
        if on_prefill is not None:
            on_prefill()
        self.cache = RowCache(self.cfg, prefill_cache, device)
        del prefill_cache
        h_like = model.embed.weight.new_zeros(B, 1, self.cfg.d_model)
        self.rule = DECODE_RULES[self.cfg.router](model, B, h_like)
        self.state = h_like  # (B, 1, D) hidden state of each row's in-flight token
        self.positions = torch.zeros(B, dtype=torch.long, device=device)  # position of that token
        self.tokens = torch.zeros(B, new_tokens, dtype=torch.long, device=device)
        self.forced = forced
        self.logits_out = first_logits.new_zeros(B, new_tokens, first_logits.shape[-1]) if keep_logits else None
        self.emitted, self.emissions = [0] * B, [[]]  # tokens each row emitted (also on the device)
        self.emitted_dev = torch.zeros(B, dtype=torch.long, device=device)
        self.step_tokens, self.block_calls = [0] * self.schedule.num_block_steps, 0
        self.block: dict[int, int] = {}  # row -> recursion step its token runs in the next call

        every_row = torch.arange(B, device=device)
        self._emit(list(range(B)), every_row, first_logits)
        if on_iteration is not None:
            on_iteration()
        waiting = self._begin(list(range(B)), every_row) if new_tokens > 1 else []  # rows to finish
        exit_batch = max(1, math.ceil(self.exit_fraction * B))
        while self.block or waiting:
            self.emissions.append([])
            if self.block:
                waiting += self._block_call()
            # lockstep: wait for every sequence; deferred: for a batch's worth of stopped tokens
            if waiting and not self.block or (not self.barrier and len(waiting) >= exit_batch):
                waiting = self._begin(*self._finish(sorted(waiting)))
            if on_iteration is not None:
                on_iteration()
        result = Generation(
            self.tokens,
            self.logits_out,
            self.emissions,
            self.step_tokens,
            self.cache.allocated_bytes(),
            self.block_calls,
        )
        del self.cache, self.state, self.rule, self.tokens, self.logits_out  # free the KV memory now
        return result


class LockstepDecoder(RowDecoder):
    """Row gathering without depth-wise batching: sequences wait for each other every token."""

    barrier = True


class DepthwiseDecoder(RowDecoder):
    """Continuous depth-wise batching (the module docstring)."""

    barrier = False


class DeferredDepthwiseDecoder(DepthwiseDecoder):
    """Depth-wise batching whose exit stage waits for a quarter of the batch (the paper's
    design, MOR.md 4.2): fewer post-/pre-block calls, at the price of fuller block calls."""

    exit_fraction = 0.25
