"""Routers: which tokens take each recursion step, and how the block output is merged.

Contract of a ``Router`` (every entry of ``ROUTERS`` follows it; the shared
contract tests in tests/model_tests/test_routers.py run over all of them):

* ``start(h)`` is called once with the hidden state entering the first recursion
  step (B, T, D); it returns nothing and prepares per-forward state.
* ``select(step, h)`` returns a ``Selection`` of the tokens that run the shared
  block at that step: their sorted indices (B, K) (``None`` = every token, no
  gather at all), a validity mask (B, K) when rows hold different numbers of
  tokens (padding), and the gate (B, K, 1) multiplying the block output.
  Tokens not selected at step r are never selected again (hierarchical filtering).
  In training, expert-choice keeps exactly ``max(1, floor(capacity_r * T))``
  tokens per sequence (the paper's top-k); in eval mode every router decides per
  token from that token's own state only, so the model is causal.
* ``merge(step, h_in, out, selection)`` returns the new states of the selected
  tokens from their input states and the block output.
* ``aux_losses()`` returns the unweighted auxiliary losses of the last forward,
  ``weighted_aux_loss()`` their sum with the config's coefficients.
* ``after_optimizer_step()`` updates non-learned state (token-choice loss-free bias).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from morsearch.config import ModelConfig
from morsearch.config.model import ROUTER_HIDDEN_MULTIPLIER


@dataclass
class Selection:
    index: torch.Tensor | None  # (B, K) sorted indices into the call's tokens; None = all tokens
    valid: torch.Tensor | None  # (B, K) bool; None = all entries valid
    gate: torch.Tensor | None  # (B, K, 1); None = no gating (plain recursion)
    num_tokens: torch.Tensor  # scalar: valid selected tokens, for routing statistics


@dataclass
class WidthPlan:
    """The widths ``compact`` chose in one forward, so that the forward can be captured as a CUDA graph.

    While ``recording()``, each ``compact`` learns its width from the device (a host
    sync) and notes it. While ``replaying()``, the same forward's calls take the noted
    widths instead, with no sync, and each leaves the width its mask asks for on the
    device (``observed``): after the captured graph ran for a new input, comparing them
    with the notes tells whether that input routes to the same shapes.
    """

    widths: list[int] = field(default_factory=list)
    observed: list[torch.Tensor] = field(default_factory=list)
    replay: bool = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.widths, self.replay = [], False
        with _active(self):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        self.observed, self.replay = [], True
        with _active(self):
            yield


_PLAN: ContextVar[WidthPlan | None] = ContextVar("width_plan", default=None)


@contextlib.contextmanager
def _active(plan: WidthPlan) -> Iterator[None]:
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def compact(mask: torch.Tensor, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the True entries of ``mask`` (B, N) to the front of each row, in order.

    Returns indices into N (B, K) and their validity (B, K), K = most True in a row,
    rounded up to ``multiple_of`` (capped at N) so that compiled layers see few shapes;
    K = 0 when no entry is True. Rows with fewer entries are padded with their
    unselected indices (marked invalid). Learning K is the one host sync, unless a
    ``WidthPlan`` is replaying.
    """
    N = mask.shape[1]
    order = torch.arange(N, device=mask.device)
    keys = torch.where(mask, order, order + N)  # selected first, each group in position order
    plan = _PLAN.get()
    if plan is not None and plan.replay:
        width = plan.widths[len(plan.observed)]
        count = mask.sum(dim=1).amax() if mask.numel() else mask.new_zeros((), dtype=torch.long)
        plan.observed.append(((count + multiple_of - 1) // multiple_of * multiple_of).clamp(max=N))
    else:
        count = int(mask.sum(dim=1).max()) if mask.numel() else 0
        width = min(N, -(-count // multiple_of) * multiple_of)
        if plan is not None:
            plan.widths.append(width)
    index = keys.argsort(dim=1)[:, :width]
    valid = mask.gather(1, index)
    return index, valid


def router_network(cfg: ModelConfig, outputs: int) -> nn.Module:
    hidden = ROUTER_HIDDEN_MULTIPLIER[cfg.router_network] * cfg.d_model
    if hidden == 0:
        return nn.Linear(cfg.d_model, outputs, bias=False)
    return nn.Sequential(nn.Linear(cfg.d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, outputs, bias=False))


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) at index (B, K) -> (B, K, ...)."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._losses: dict[str, torch.Tensor] = {}

    def start(self, h: torch.Tensor) -> None:
        self._losses = {}

    def select(self, step: int, h: torch.Tensor) -> Selection:
        raise NotImplementedError

    def merge(self, step: int, h_in: torch.Tensor, out: torch.Tensor, selection: Selection) -> torch.Tensor:
        raise NotImplementedError

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return dict(self._losses)

    def weighted_aux_loss(self) -> torch.Tensor | None:
        return None

    def after_optimizer_step(self) -> None:
        return None

    def _add_loss(self, name: str, value: torch.Tensor) -> None:
        self._losses[name] = self._losses[name] + value if name in self._losses else value


class NoRouter(Router):
    """The plain recursive transformer: every token runs every step, h <- Block(h)."""

    def select(self, step: int, h: torch.Tensor) -> Selection:
        return Selection(None, None, None, torch.full((), h.shape[0] * h.shape[1], device=h.device))

    def merge(self, step: int, h_in: torch.Tensor, out: torch.Tensor, selection: Selection) -> torch.Tensor:
        return out


class ExpertChoiceRouter(Router):
    """One router per recursion step scores the surviving tokens (MOR.md section 2.1).

    Kept tokens get h + alpha * G(w_r . h) * Block(h), with Block containing its own
    residual; the rest keep h and drop out of later steps. Training keeps the top
    capacity share per sequence and trains the router with a BCE loss towards that
    choice, so at inference a per-token threshold (score > 0, i.e. sigmoid > 0.5)
    reproduces it causally.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.networks = nn.ModuleList(router_network(cfg, 1) for _ in range(cfg.num_recursions))
        # Tokens that survived the last step: indices (B, A) and validity (padding in eval).
        self._alive: torch.Tensor | None = None
        self._alive_valid: torch.Tensor | None = None

    def start(self, h: torch.Tensor) -> None:
        super().start(h)
        self._alive, self._alive_valid = None, None

    def _gate(self, logits: torch.Tensor) -> torch.Tensor:
        activation = torch.sigmoid if self.cfg.gate == "sigmoid" else torch.tanh
        return self.cfg.alpha * activation(logits)

    def select(self, step: int, h: torch.Tensor) -> Selection:
        B, T, _ = h.shape
        alive, alive_valid = self._alive, self._alive_valid
        h_alive = h if alive is None else gather_tokens(h, alive)  # (B, A, D)
        logits = self.networks[step](h_alive).squeeze(-1).float()  # (B, A)
        gates = self._gate(logits)
        capacity = self.cfg.step_capacities[step]
        local, valid = None, alive_valid  # local: indices into the alive tokens; None = keep all
        if capacity < 1.0 and self.training:
            k = max(1, int(capacity * T))
            local = logits.topk(k, dim=1).indices.sort(dim=1).values  # sorted keeps causal order
            target = torch.zeros_like(logits).scatter_(1, local, 1.0)
            self._add_loss("router_aux", F.binary_cross_entropy_with_logits(logits, target))
        elif capacity < 1.0:
            keep = logits > 0 if alive_valid is None else (logits > 0) & alive_valid
            local, valid = compact(keep)
        if self.training and self.cfg.router_z_loss_coeff > 0:
            self._add_loss("z_loss", logits.pow(2).mean())
        if local is None:
            index, gate = alive, gates.unsqueeze(-1)
        else:
            index = local if alive is None else alive.gather(1, local)
            gate = gates.gather(1, local).unsqueeze(-1)
        self._alive, self._alive_valid = index, valid
        if valid is not None:
            count = valid.sum()
        else:
            count = torch.full((), B * T if index is None else index.numel(), device=h.device)  # no host copy
        return Selection(index, valid, gate.to(h.dtype), count)

    def merge(self, step: int, h_in: torch.Tensor, out: torch.Tensor, selection: Selection) -> torch.Tensor:
        assert selection.gate is not None
        return h_in + selection.gate * out

    def weighted_aux_loss(self) -> torch.Tensor | None:
        losses = self._losses
        parts = []
        if "router_aux" in losses:
            parts.append(self.cfg.router_aux_loss_coeff * losses["router_aux"])
        if "z_loss" in losses:
            parts.append(self.cfg.router_z_loss_coeff * losses["z_loss"])
        return sum(parts[1:], parts[0]) if parts else None


class TokenChoiceRouter(Router):
    """One router at the first step's input picks each token's depth (MOR.md section 2.2).

    A token assigned depth i runs steps 0..i-1; intermediate steps pass the block
    output on, and at its last step the token becomes H1 + g_i * Block(h) (the
    released code's reading of the paper's Eq. 2.2), with H1 the first step's input.
    Balancing: an auxiliary loss, or a loss-free bias that shifts only the argmax.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.network = router_network(cfg, cfg.num_recursions)
        self.register_buffer("balance_bias", torch.zeros(cfg.num_recursions))
        self.register_buffer("load_since_update", torch.zeros(cfg.num_recursions))
        self._depth: torch.Tensor | None = None  # (B, T) assigned number of steps, 1..Nr
        self._gate: torch.Tensor | None = None  # (B, T) gate of the assigned depth
        self._first_input: torch.Tensor | None = None

    def start(self, h: torch.Tensor) -> None:
        super().start(h)
        nr = self.cfg.num_recursions
        logits = self.network(h).float()  # (B, T, Nr)
        if self.cfg.gate == "softmax":
            scores = self.cfg.alpha * logits.softmax(dim=-1)
        else:
            scores = self.cfg.alpha * torch.sigmoid(logits)
        biased = scores + self.balance_bias if self.cfg.balancing == "loss_free" else scores
        choice = biased.argmax(dim=-1)  # (B, T) in 0..Nr-1
        self._depth = choice + 1
        self._gate = scores.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        self._first_input = h
        if self.training:
            load = F.one_hot(choice, nr).float().mean(dim=(0, 1))  # share of tokens per depth
            if self.cfg.balancing == "loss":
                probs = logits.softmax(dim=-1).mean(dim=(0, 1))
                self._add_loss("balancing", nr * (load * probs).sum())
            else:
                self.load_since_update += load.detach()
            if self.cfg.router_z_loss_coeff > 0:
                self._add_loss("z_loss", torch.logsumexp(logits, dim=-1).pow(2).mean())

    def select(self, step: int, h: torch.Tensor) -> Selection:
        assert self._depth is not None and self._gate is not None
        active = self._depth > step  # (B, T)
        if step == 0:
            return Selection(None, None, self._gate.unsqueeze(-1).to(h.dtype), active.sum())
        # In training, pad to eighths of the sequence: at most 8 shapes for compiled layers.
        bucket = -(-active.shape[1] // 8) if self.training else 1
        index, valid = compact(active, multiple_of=bucket)
        gate = self._gate.gather(1, index).unsqueeze(-1).to(h.dtype)
        return Selection(index, valid, gate, valid.sum())

    def merge(self, step: int, h_in: torch.Tensor, out: torch.Tensor, selection: Selection) -> torch.Tensor:
        assert self._depth is not None and self._first_input is not None and selection.gate is not None
        depth, first = self._depth, self._first_input
        if selection.index is not None:
            depth = depth.gather(1, selection.index)
            first = gather_tokens(first, selection.index)
        finishing = (depth == step + 1).unsqueeze(-1)  # (B, K, 1)
        return torch.where(finishing, first + selection.gate * out, out)

    def weighted_aux_loss(self) -> torch.Tensor | None:
        losses = self._losses
        parts = []
        if "balancing" in losses:
            parts.append(self.cfg.balancing_coeff * losses["balancing"])
        if "z_loss" in losses:
            parts.append(self.cfg.router_z_loss_coeff * losses["z_loss"])
        return sum(parts[1:], parts[0]) if parts else None

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.cfg.balancing != "loss_free" or not self.load_since_update.any():
            return
        load = self.load_since_update
        self.balance_bias += self.cfg.balancing_update_rate * torch.sign(load.mean() - load)
        self.load_since_update.zero_()


ROUTERS: dict[str, type[Router]] = {
    "none": NoRouter,
    "expert_choice": ExpertChoiceRouter,
    "token_choice": TokenChoiceRouter,
}
