"""KV caches for incremental decoding, one slot per layer application.

    recursion_wise (Nr=3, expert-choice):     recursive_sharing:
      (layer, step 0): all tokens               (layer, step 0): all tokens
      (layer, step 1): tokens kept at step 1    steps 1, 2: read (layer, step 0)
      (layer, step 2): tokens kept at step 2

A slot stores, per batch row, only the tokens that were active when it was
written, in position order; rows may hold different numbers of tokens, so each
entry carries its token position and a validity bit, and attention masks by
position (key position <= query position). Storage grows in chunks of
``chunk_tokens`` so ``allocated_bytes`` is what the device really holds.

Sizing storage and scattering a masked write need the rows' lengths on the host, a
device sync each. Two kinds of write need none, and they are the whole of a prefill:
while every write took all of its tokens (the pre- and post-block layers, unrouted
steps, a vanilla model), every row holds as many entries and the host knows how many
(``uniform_length``); and a masked write into an empty slot puts each row's valid
entries, which come first, at its start. Both are slices. Reads need no sync either:
the host keeps the longest row's length (``longest``) from the writes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from morsearch.config import ModelConfig
from morsearch.model.sharing import Application, layer_schedule


class CacheSlot:
    """K/V of one layer application for a batch of sequences."""

    def __init__(self, batch_size: int, kv_heads: int, head_dim: int, chunk_tokens: int) -> None:
        self.batch_size, self.kv_heads, self.head_dim = batch_size, kv_heads, head_dim
        self.chunk_tokens = chunk_tokens
        self.keys: torch.Tensor | None = None  # (B, G, S, E)
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # (B, S) token position of each entry
        self.lengths: torch.Tensor | None = None  # (B,) entries written per row
        self.uniform_length: int | None = 0  # every row's length while all are equal and known, else None
        self.longest = 0  # the longest row's length, known on the host

    def _reserve(self, needed: int, like: torch.Tensor) -> None:
        capacity = 0 if self.keys is None else self.keys.shape[2]
        if self.keys is not None and needed <= capacity:
            return  # (a first call with nothing to store still allocates empty tensors)
        size = -(-needed // self.chunk_tokens) * self.chunk_tokens
        B, G, E = self.batch_size, self.kv_heads, self.head_dim
        keys = like.new_zeros(B, G, size, E)
        values = like.new_zeros(B, G, size, E)
        positions = torch.zeros(B, size, dtype=torch.long, device=like.device)
        if self.keys is not None:
            keys[:, :, :capacity] = self.keys
            values[:, :, :capacity] = self.values
            positions[:, :capacity] = self.positions
        else:
            self.lengths = torch.zeros(B, dtype=torch.long, device=like.device)
        self.keys, self.values, self.positions = keys, values, positions

    def append(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Write the valid entries of k, v (B, G, T, E) after each row's existing ones.

        ``valid`` (B, T): each row's valid entries come first, as ``compact`` orders them,
        and some row has T of them; None: all are valid.
        """
        B, _, T, _ = k.shape
        if self.uniform_length is not None and (valid is None or self.uniform_length == 0):
            # a slice: every row starts at the same known length (into an empty slot, a
            # masked write's padding lands after its row's length, where view() masks it)
            start = self.uniform_length
            self._reserve(start + T, k)
            assert self.keys is not None and self.values is not None
            assert self.positions is not None and self.lengths is not None
            self.keys[:, :, start : start + T] = k
            self.values[:, :, start : start + T] = v
            self.positions[:, start : start + T] = positions
            self.lengths = self.lengths + T if valid is None else valid.sum(dim=1)
            self.uniform_length = start + T if valid is None else None
            self.longest = start + T
            return
        self.uniform_length = None
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=k.device)
        lengths = self.lengths if self.lengths is not None else torch.zeros(B, dtype=torch.long, device=k.device)
        new_lengths = lengths + valid.sum(dim=1)
        self.longest = int(new_lengths.max())
        self._reserve(self.longest, k)
        assert self.keys is not None and self.values is not None and self.positions is not None
        rows, cols = valid.nonzero(as_tuple=True)  # entry j of row b goes to lengths[b] + rank of j
        slots = lengths[rows] + (valid.cumsum(dim=1) - 1)[rows, cols]
        self.keys[rows, :, slots] = k[rows, :, cols]
        self.values[rows, :, slots] = v[rows, :, cols]
        self.positions[rows, slots] = positions[rows, cols]
        self.lengths = new_lengths

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """keys, values (B, G, S, E), positions (B, S), valid (B, S) over the used length."""
        assert self.keys is not None and self.values is not None
        assert self.positions is not None and self.lengths is not None
        used = self.longest
        valid = torch.arange(used, device=self.lengths.device) < self.lengths.unsqueeze(1)
        return self.keys[:, :, :used], self.values[:, :, :used], self.positions[:, :used], valid

    def allocated_bytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return self.keys.nbytes + self.values.nbytes


class StepKV:
    """K/V of one application during a cache-less forward (training, scoring), kept so
    deeper recursion steps can read it under recursive KV sharing."""

    def __init__(self) -> None:
        self.entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None) -> None:
        if valid is None:
            valid = torch.ones_like(positions, dtype=torch.bool)
        self.entries = (k, v, positions, valid)

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.entries is not None, "a deeper step read K/V before step 0 wrote them"
        return self.entries


def shared_source(application: Application) -> Application:
    """Under recursive KV sharing every application reads its layer's first one."""
    return (application[0], 0)


# strategy -> does this layer application write K/V of its own (else it reads its layer's step 0)?
KV_STRATEGIES: dict[str, Callable[[Application], bool]] = {
    "recursion_wise": lambda application: True,
    "recursive_sharing": lambda application: application[1] == 0,
}


def writes_own_kv(cfg: ModelConfig, application: Application) -> bool:
    return KV_STRATEGIES[cfg.kv_strategy](application)


def cached_applications(cfg: ModelConfig) -> list[Application]:
    """The applications that keep K/V of their own (the rest read a shared slot)."""
    return [app for app in layer_schedule(cfg).applications() if writes_own_kv(cfg, app)]


class KVCache:
    """All slots of one model for one batch; ``seq_len`` tokens have been fed so far."""

    def __init__(self, cfg: ModelConfig, batch_size: int, chunk_tokens: int = 256) -> None:
        self.cfg, self.batch_size, self.seq_len = cfg, batch_size, 0
        self.slots = {
            app: CacheSlot(batch_size, cfg.kv_heads, cfg.head_dim, chunk_tokens) for app in cached_applications(cfg)
        }

    def slots_for(self, application: Application) -> tuple[CacheSlot | None, CacheSlot]:
        """(slot to write or None, slot to read) for one layer application."""
        if writes_own_kv(self.cfg, application):
            return self.slots[application], self.slots[application]
        return None, self.slots[shared_source(application)]

    def allocated_bytes(self) -> int:
        return sum(slot.allocated_bytes() for slot in self.slots.values())

    def tokens_per_slot(self) -> dict[Application, int]:
        """Entries each slot holds, summed over the batch (for the accounting)."""
        return {app: 0 if slot.lengths is None else int(slot.lengths.sum()) for app, slot in self.slots.items()}
