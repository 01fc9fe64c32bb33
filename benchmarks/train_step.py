"""Training-step throughput: morsearch's models against a plain compiled GPT step, in one run.

    python -m benchmarks.train_step            # GPU: writes benchmarks/results/train_step.json
    python -m benchmarks.train_step --quick    # CPU smoke run with a tiny shape (not committed)

Models (issue "The MoR model library", Speed):
  anchor     a plain GPT written here (RMSNorm, RoPE, GQA SDPA, SwiGLU, tied head), whole-model compiled
  vanilla    morsearch, sharing none, the anchor's exact shape
  recursive  morsearch, Middle-Cycle Nr=3, no routing: same width and effective depth
  mor_ec     morsearch, Middle-Cycle Nr=3, expert-choice (capacities 1, 2/3, 1/3)
  mor_tc     morsearch, Middle-Cycle Nr=3, token-choice
morsearch models are compiled whole (``--compile model``, the default: routing included, one
graph per model) or per layer (``--compile layers``: ``MoRModel.compile_layers()``, fast to compile,
routing eager, more CPU overhead per step).
Targets: vanilla >= 0.95 x anchor; mor_ec >= 1.3 x recursive.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import target, write_result
from morsearch.config import ModelConfig
from morsearch.model import build_model


class AnchorBlock(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.n1, self.n2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.n1(x)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)

        def rope(t: torch.Tensor) -> torch.Tensor:
            t1, t2 = t.float().chunk(2, dim=-1)
            return torch.cat((t1 * cos - t2 * sin, t2 * cos + t1 * sin), dim=-1).type_as(t)

        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class AnchorGPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(
            AnchorBlock(cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.ffn_dim) for _ in range(cfg.num_layers)
        )
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        hd = cfg.head_dim
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
        angles = torch.outer(torch.arange(cfg.max_seq_len).float(), inv)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.norm(x), self.embed.weight)


def base_shape(quick: bool) -> dict[str, object]:
    if quick:
        return dict(vocab_size=256, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=176, max_seq_len=64)
    # the paper's 360M base shape (MOR.md 5.1): 32 effective layers, Middle-Cycle 1 + 10 x 3 + 1 for Nr=3
    return dict(vocab_size=49152, d_model=960, num_heads=15, num_kv_heads=5, ffn_dim=2560, max_seq_len=2048)


def configs(quick: bool) -> dict[str, ModelConfig]:
    depth = 8 if quick else 32
    vanilla = ModelConfig(**base_shape(quick), num_layers=depth)
    recursive = vanilla.replace(num_recursions=3, sharing="middle_cycle")
    return {
        "vanilla": vanilla,
        "recursive": recursive,
        "mor_ec": recursive.replace(router="expert_choice"),
        "mor_tc": recursive.replace(router="token_choice"),
    }


def time_training(name: str, model: nn.Module, step_fn, batch: int, seq: int, steps: int, warmup: int) -> dict:
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    data = torch.randint(0, 256, (batch, seq + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]

    def one_step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step_fn(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    start = time.perf_counter()
    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    durations = []
    for _ in range(3):  # three timed windows: the spread says how steady the number is
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(steps):
                loss = one_step()
            end.record()
            torch.cuda.synchronize()
            durations.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = one_step()
            durations.append(time.perf_counter() - t0)
    best = sorted(durations)[1]  # median of three
    tokens_per_s = batch * seq * steps / best
    result = {
        "tokens_per_s": tokens_per_s,
        "window_seconds": durations,
        "warmup_seconds": warmup_s,
        "final_loss": loss.item(),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    print(f"{name:10s} {tokens_per_s:12,.0f} tok/s  (windows {', '.join(f'{d:.3f}' for d in durations)} s)")
    return result


def anchor_step(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def morsearch_step(model, x, y):
    out = model(x)
    return F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten()) + out.aux_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", choices=["model", "layers"], default="model", help="how morsearch models compile")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    batch = args.batch or (2 if args.quick else 8)
    seq = args.seq or (32 if args.quick else 2048)
    steps = args.steps or (2 if args.quick else 10)
    warmup = 1 if args.quick else 10  # token-choice meets up to 8 padded shapes per step
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.recompile_limit = 64  # token-choice: one graph per padded shape

    cfgs = configs(args.quick)
    raw: dict[str, object] = {
        "batch": batch, "seq_len": seq, "steps_per_window": steps, "compile": args.compile, "models": {},
    }
    models: dict[str, dict] = raw["models"]  # type: ignore[assignment]
    anchor = AnchorGPT(cfgs["vanilla"]).to(device)
    anchor_compiled = torch.compile(anchor) if device.type == "cuda" else anchor
    models["anchor"] = time_training("anchor", anchor_compiled, anchor_step, batch, seq, steps, warmup)
    models["anchor"]["params"] = sum(p.numel() for p in anchor.parameters())
    del anchor, anchor_compiled
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg, device=device)
        compiled: nn.Module = model
        if device.type == "cuda" and args.compile == "layers":
            model.compile_layers()
        elif device.type == "cuda":
            compiled = torch.compile(model, dynamic=False)
        models[name] = time_training(name, compiled, morsearch_step, batch, seq, steps, warmup)
        models[name]["params"] = cfg.unique_parameters()
        models[name]["config"] = cfg.model_dump(mode="json")
        del model, compiled
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    rate = {name: m["tokens_per_s"] for name, m in models.items()}
    raw["ratios"] = {
        "vanilla_vs_anchor": rate["vanilla"] / rate["anchor"],
        "mor_ec_vs_recursive": rate["mor_ec"] / rate["recursive"],
        "mor_tc_vs_recursive": rate["mor_tc"] / rate["recursive"],
        "recursive_vs_vanilla": rate["recursive"] / rate["vanilla"],
    }
    for key, value in raw["ratios"].items():  # type: ignore[union-attr]
        print(f"{key:22s} {value:.3f}")
    targets = [
        target("vanilla_vs_anchor", raw["ratios"]["vanilla_vs_anchor"], 0.95),  # type: ignore[index]
        target("mor_ec_nr3_vs_recursive", raw["ratios"]["mor_ec_vs_recursive"], 1.3),  # type: ignore[index]
    ]
    if args.quick:
        assert all(math.isfinite(v) for v in rate.values())
        print("quick run: result not written")
        return
    print("wrote", write_result("train_step", raw, targets))


if __name__ == "__main__":
    main()
