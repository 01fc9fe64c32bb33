"""``ModelConfig``: one validated, frozen description of every MoR variant.

Terms follow the MoR paper (Bae et al., 2025):

* ``num_layers`` is the effective (unrolled) depth L; ``num_recursions`` is Nr.
* ``sharing`` maps unrolled layers onto unique layers (MOR.md section 1):

      cycle           L=6, Nr=3:  [0 1] [0 1] [0 1]            unique = L/Nr
      sequence        L=6, Nr=3:  0 0 0 1 1 1                  unique = L/Nr
      middle_cycle    L=8, Nr=3:  0 | [1 2] [1 2] [1 2] | 3    unique = 2 + (L-2)/Nr
      middle_sequence L=8, Nr=3:  0 | 1 1 1 2 2 2 | 3          unique = 2 + (L-2)/Nr

  Only the cycle types have a whole-block recursion step ``[...]`` that a router
  can let a token skip, so routing requires ``cycle`` or ``middle_cycle``.
* ``router`` decides per token how many recursion steps it takes:
  ``none`` (every token every step: the plain recursive transformer),
  ``expert_choice`` (a router per step keeps the top ``capacity`` share of the
  tokens that survived the previous step) or ``token_choice`` (one router picks
  each token's depth once). Router options given with ``router: none``, and one
  router type's options given to the other, are refused rather than silently ignored.
* ``kv_strategy``: ``recursion_wise`` caches K/V per recursion step, only for the
  tokens active at that step (with ``router: none`` that is the plain per-step
  cache of a recursive model); ``recursive_sharing`` caches the first step's K/V
  and every deeper step of the same layer attends to it.

Derived values (head size, unique layers, the resolved router defaults) are
properties computed from the fields, so the stored config stays what the user
wrote and ``replace`` re-derives them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from morsearch.config.base import FrozenConfig
from morsearch.errors import ConfigError

SharingName = Literal["none", "cycle", "sequence", "middle_cycle", "middle_sequence"]
RouterName = Literal["none", "expert_choice", "token_choice"]
KVStrategyName = Literal["recursion_wise", "recursive_sharing"]
RouterNetworkName = Literal["linear", "mlp", "wide_mlp"]
GateName = Literal["sigmoid", "tanh", "softmax"]
BalancingName = Literal["loss", "loss_free"]
CapacityScheduleName = Literal["linear", "geometric"]

CYCLE_SHARINGS = ("cycle", "middle_cycle")
MIDDLE_SHARINGS = ("middle_cycle", "middle_sequence")
ROUTER_GATES: dict[str, tuple[str, ...]] = {
    "expert_choice": ("sigmoid", "tanh"),
    "token_choice": ("softmax", "sigmoid"),
}
# The paper's final choices (MOR.md section 2): EC sigmoid x 0.1, TC softmax x 1.0.
DEFAULT_GATE = {"expert_choice": "sigmoid", "token_choice": "softmax"}
DEFAULT_ALPHA = {"expert_choice": 0.1, "token_choice": 1.0}
ROUTER_HIDDEN_MULTIPLIER = {"linear": 0, "mlp": 2, "wide_mlp": 4}
# Fields that only a router reads; with router='none' no router is built, so giving one is refused.
ROUTER_FIELDS = (
    "router_network",
    "router_gate",
    "router_alpha",
    "capacity_schedule",
    "capacities",
    "router_aux_loss_coeff",
    "balancing",
    "balancing_coeff",
    "balancing_update_rate",
    "router_z_loss_coeff",
)
# Fields that only one router type reads (``capacities`` is checked with its own values below).
SINGLE_ROUTER_FIELDS = {
    "capacity_schedule": "expert_choice",
    "router_aux_loss_coeff": "expert_choice",
    "balancing": "token_choice",
    "balancing_coeff": "token_choice",
    "balancing_update_rate": "token_choice",
}


class ModelConfig(FrozenConfig):
    """A Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA) with MoR recursion and routing."""

    # --- shape ---------------------------------------------------------------
    vocab_size: int = Field(256, ge=2, description="Vocabulary size (256 for the byte-level tokenizer).")
    d_model: int = Field(ge=8, description="Hidden width.")
    num_heads: int = Field(ge=1, description="Attention (query) heads; must divide d_model.")
    num_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads for grouped-query attention; None: same as num_heads."
    )
    ffn_dim: int = Field(ge=1, description="Hidden width of the SwiGLU feed-forward block.")
    num_layers: int = Field(ge=1, description="Effective (unrolled) depth L = unique layers x recursions.")
    max_seq_len: int = Field(2048, ge=1, description="Longest sequence (prompt + generated) the model serves.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    tie_embeddings: bool = Field(True, description="Share the input embedding with the output head.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the normal weight init.")

    # --- recursion -----------------------------------------------------------
    num_recursions: int = Field(1, ge=1, le=16, description="Recursion steps Nr (1 = no recursion).")
    sharing: SharingName = Field("none", description="How unrolled layers map to shared layers.")
    kv_strategy: KVStrategyName = Field("recursion_wise", description="KV caching across recursion steps.")

    # --- routing -------------------------------------------------------------
    router: RouterName = Field("none", description="Per-token depth router.")
    router_network: RouterNetworkName = Field(
        "linear", description="Router network: linear, mlp (hidden 2d) or wide_mlp (hidden 4d)."
    )
    router_gate: GateName | None = Field(
        None,
        description="Gate function; None: sigmoid for expert_choice, softmax for token_choice.",
    )
    router_alpha: float | None = Field(
        None, gt=0, description="Gate output scaling alpha; None: 0.1 for expert_choice, 1.0 for token_choice."
    )
    capacity_schedule: CapacityScheduleName = Field(
        "linear",
        description="Expert-choice capacity per step: linear (Nr-j+1)/Nr (the paper's) or geometric 2^-(j-1).",
    )
    capacities: tuple[float, ...] | None = Field(
        None, description="Explicit expert-choice capacity per recursion step (overrides capacity_schedule)."
    )
    router_aux_loss_coeff: float = Field(
        1e-3,
        ge=0,
        description="Expert-choice BCE auxiliary loss that makes per-token thresholding causal at inference.",
    )
    balancing: BalancingName = Field("loss", description="Token-choice load balancing: loss or loss_free bias.")
    balancing_coeff: float = Field(0.1, ge=0, description="Token-choice balancing loss weight.")
    balancing_update_rate: float = Field(
        1e-3, ge=0, description="Token-choice loss-free bias update rate u per optimizer step."
    )
    router_z_loss_coeff: float = Field(0.0, ge=0, description="Router z-loss weight (0 = off).")

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelConfig:
        problems = list(self._shape_problems()) + list(self._recursion_problems())
        problems += list(self._router_problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _shape_problems(self) -> list[str]:
        problems = []
        if self.d_model % self.num_heads:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            problems.append(
                f"num_heads={self.num_heads} must divide d_model={self.d_model}; allowed num_heads: {divisors}"
            )
        elif self.head_dim % 2:
            problems.append(f"head size d_model/num_heads={self.head_dim} must be even for RoPE")
        if self.num_heads % self.kv_heads:
            problems.append(
                f"num_kv_heads={self.kv_heads} must divide num_heads={self.num_heads} (grouped-query attention)"
            )
        return problems

    def _recursion_problems(self) -> list[str]:
        nr, layers = self.num_recursions, self.num_layers
        if self.sharing == "none":
            if nr != 1:
                return [
                    f"sharing='none' (all layers unique) needs num_recursions=1, got {nr}; "
                    "choose sharing from cycle, sequence, middle_cycle, middle_sequence"
                ]
            return []
        shared = layers - 2 if self.sharing in MIDDLE_SHARINGS else layers
        if shared < nr or shared % nr:
            fixed = max(nr, shared + (-shared) % nr) + (layers - shared)
            return [
                f"sharing='{self.sharing}' with num_recursions={nr} needs "
                f"{'num_layers - 2' if self.sharing in MIDDLE_SHARINGS else 'num_layers'} to be a positive "
                f"multiple of {nr}, got num_layers={layers}; use num_layers={fixed} (the paper adds layers "
                "rather than dropping them)"
            ]
        return []

    def _router_problems(self) -> list[str]:
        if self.router == "none":
            return self._ignored_router_fields()
        problems = [
            f"{name}={getattr(self, name)!r} applies to router='{owner}' only and has no effect with "
            f"router='{self.router}'; remove {name}, or set router='{owner}'"
            for name, owner in SINGLE_ROUTER_FIELDS.items()
            if owner != self.router and self._set_to_a_non_default(name)
        ]
        if self.sharing not in CYCLE_SHARINGS:
            problems.append(
                f"router='{self.router}' needs a whole-block recursion step to route tokens through, "
                f"which sharing='{self.sharing}' does not have; use sharing='middle_cycle' or 'cycle'"
            )
        allowed_gates = ROUTER_GATES[self.router]
        if self.router_gate is not None and self.router_gate not in allowed_gates:
            problems.append(
                f"router_gate='{self.router_gate}' is not available for router='{self.router}'; "
                f"allowed: {', '.join(allowed_gates)}"
            )
        if self.capacities is not None:
            if self.router != "expert_choice":
                problems.append("capacities apply to router='expert_choice' only; remove them")
            elif len(self.capacities) != self.num_recursions:
                problems.append(
                    f"capacities has {len(self.capacities)} values but num_recursions={self.num_recursions}; "
                    "give one capacity per recursion step"
                )
            elif any(not 0 < c <= 1 for c in self.capacities):
                problems.append(f"capacities={list(self.capacities)} must each lie in (0, 1]")
            elif self.kv_strategy == "recursive_sharing" and self.capacities[0] < 1:
                problems.append(
                    f"kv_strategy='recursive_sharing' reuses the first step's K/V, so every token must take "
                    f"the first step; capacities[0] must be 1.0, got {self.capacities[0]}"
                )
            elif any(b > a for a, b in zip(self.capacities, self.capacities[1:], strict=False)):
                problems.append(
                    f"capacities={list(self.capacities)} must be non-increasing: a token can only "
                    "reach a step it survived the step before"
                )
        return problems

    def _ignored_router_fields(self) -> list[str]:
        """Router options given with router='none', which builds no router and would ignore them.

        Here and for the options of the other router type, only fields the user set
        (``model_fields_set``) are checked, and a set value equal to the default is accepted:
        it changes nothing, and a full ``model_dump()`` (as trial records store it) must load again.
        """
        problems = []
        for name in ROUTER_FIELDS:
            if self._set_to_a_non_default(name):
                value = getattr(self, name)
                shown = list(value) if isinstance(value, tuple) else value
                problems.append(
                    f"{name}={shown!r} has no effect with router='none' (every token takes every recursion "
                    f"step and no router is built); remove {name}, or set router='expert_choice' or "
                    "'token_choice' to use it"
                )
        return problems

    def _set_to_a_non_default(self, name: str) -> bool:
        return name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].default

    # --- derived values ---------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def num_prefix_layers(self) -> int:
        """Unique layers before the shared ones (1 for the middle strategies)."""
        return 1 if self.sharing in MIDDLE_SHARINGS else 0

    @property
    def num_suffix_layers(self) -> int:
        return self.num_prefix_layers

    @property
    def num_shared_layers(self) -> int:
        """Distinct layers inside the shared pool (B in the paper); all layers when sharing='none'."""
        return (self.num_layers - self.num_prefix_layers - self.num_suffix_layers) // self.num_recursions

    @property
    def num_unique_layers(self) -> int:
        return self.num_prefix_layers + self.num_shared_layers + self.num_suffix_layers

    @property
    def has_recursion_block(self) -> bool:
        """True when whole-block recursion steps exist (cycle types; trivially with Nr=1)."""
        return self.sharing in CYCLE_SHARINGS

    @property
    def gate(self) -> str:
        if self.router == "none":
            return "none"
        return self.router_gate or DEFAULT_GATE[self.router]

    @property
    def alpha(self) -> float:
        if self.router == "none":
            return 1.0
        return self.router_alpha if self.router_alpha is not None else DEFAULT_ALPHA[self.router]

    @property
    def step_capacities(self) -> tuple[float, ...]:
        """Share of the sequence that each recursion step processes.

        Expert-choice uses the configured schedule; the other routers report the
        share a perfectly balanced router would give (token-choice) or 1.0 (none).
        """
        nr = self.num_recursions
        if self.router == "none":
            return (1.0,) * nr
        if self.router == "expert_choice" and self.capacities is not None:
            return self.capacities
        if self.router == "expert_choice" and self.capacity_schedule == "geometric":
            return tuple(0.5**step for step in range(nr))
        return tuple((nr - step) / nr for step in range(nr))

    # --- parameter counting (pure maths; the model's sizing module builds on it) ---
    def layer_parameters(self) -> int:
        """Parameters of one transformer layer: attention, SwiGLU and two RMSNorm weights."""
        d, hd = self.d_model, self.head_dim
        attention = d * self.num_heads * hd * 2 + d * self.kv_heads * hd * 2  # q, o and k, v
        return attention + 3 * d * self.ffn_dim + 2 * d

    def router_parameters(self) -> int:
        if self.router == "none":
            return 0
        d = self.d_model
        outputs = 1 if self.router == "expert_choice" else self.num_recursions
        routers = self.num_recursions if self.router == "expert_choice" else 1
        hidden = ROUTER_HIDDEN_MULTIPLIER[self.router_network] * d
        per_router = d * outputs if hidden == 0 else d * hidden + hidden * outputs
        return routers * per_router

    def non_embedding_parameters(self) -> int:
        """Unique parameters outside the token embedding and output head (the paper's 'N-emb')."""
        return self.num_unique_layers * self.layer_parameters() + self.d_model + self.router_parameters()

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    def unique_parameters(self) -> int:
        return self.non_embedding_parameters() + self.embedding_parameters()

    # --- construction from a parameter budget --------------------------------------
    @classmethod
    def from_param_budget(
        cls,
        params_unique: int,
        *,
        num_layers: int,
        head_dim: int = 64,
        kv_group_size: int = 1,
        ffn_ratio: float = 8 / 3,
        tolerance: float = 0.02,
        **fields: object,
    ) -> ModelConfig:
        """Derive d_model, heads and ffn_dim so that unique parameters hit ``params_unique``.

        Shape rules: heads of ``head_dim`` channels, ``kv_group_size`` query heads per
        KV head, d_model a multiple of ``head_dim * kv_group_size``, and ffn_dim (a
        multiple of 8) as close to ``ffn_ratio * d_model`` as the budget allows; the
        ffn width absorbs the remainder so the count lands within ``tolerance``. A shape
        at or below the budget wins over one above it whenever one is within tolerance:
        a budget reads as a cap, and a search whose cap equals its range's top should
        not keep proposing models just over it.
        Every other field (sharing, router, vocab, ...) passes through ``fields``.
        """
        step = head_dim * kv_group_size
        best: ModelConfig | None = None
        best_score = float("inf")
        for d_model in range(step, 64 * step + 1, step):
            heads = d_model // head_dim
            probe = cls(
                d_model=d_model,
                num_heads=heads,
                num_kv_heads=heads // kv_group_size,
                ffn_dim=8,
                num_layers=num_layers,
                **fields,
            )
            per_ffn_unit = 3 * d_model * probe.num_unique_layers
            below = math.floor((params_unique - probe.unique_parameters()) / per_ffn_unit / 8) * 8 + 8
            if below < 8:
                break  # wider models only overshoot more
            for ffn in (below, below + 8):  # the widths just below and just above the budget
                candidate = probe.replace(ffn_dim=ffn)
                error = (candidate.unique_parameters() - params_unique) / params_unique
                score = (
                    abs(ffn / d_model - ffn_ratio) + (1e3 if abs(error) > tolerance else 0) + (10 if error > 0 else 0)
                )
                if score < best_score:
                    best, best_score = candidate, score
        if best is None or abs(best.unique_parameters() - params_unique) > tolerance * params_unique:
            smallest = cls(
                d_model=step,
                num_heads=step // head_dim,
                num_kv_heads=step // head_dim // kv_group_size,
                ffn_dim=8,
                num_layers=num_layers,
                **fields,
            ).unique_parameters()
            raise ConfigError(
                f"params_unique={params_unique:,} cannot be met within {tolerance:.0%} with "
                f"num_layers={num_layers}, head_dim={head_dim}: the smallest such model has "
                f"{smallest:,} parameters; raise the budget or lower num_layers/head_dim/vocab_size"
            )
        return best
