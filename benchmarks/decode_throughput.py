"""Decode throughput and memory: vanilla, recursive and MoR on one base shape, in one run.

    python -m benchmarks.decode_throughput            # GPU: writes benchmarks/results/decode_throughput.json
    python -m benchmarks.decode_throughput --quick    # CPU smoke run with a tiny shape (not written)

Models (issue "Measured memory and throughput ...", Speed), all with the same width and
the same effective depth (unique layers x recursions, as the paper compares them):
  vanilla               sharing none; timed with the CUDA-graph decoder, the graphed
                        depth-wise one (vanilla@graphed_depthwise), the first with its
                        layer calls compiled (vanilla@compiled), the row decoder
                        (vanilla@rows) and the model's own forward (vanilla@reference)
  recursive-nr{2,3,4}   Middle-Cycle, no routing (every token every step)
  mor{2,3,4}-{ec,tc}-{cache,share}
                        expert/token-choice routing, recursion-wise caching / recursive sharing
  <any of these>@graphed_depthwise
                        the same model with continuous depth-wise batching under CUDA graphs
  mor3-ec-cache@lockstep, @depthwise, @depthwise_deferred, @reference, @compiled
                        the same model with the other decoders, to show where the speed comes from
  {vanilla,mor3-ec-cache,mor3-ec-share}@depthwise_compiled
                        graphed depth-wise batching with each iteration compiled (fused) before capture
Each is measured by ``morsearch.measure.measure`` (warm-up, CUDA events, repeats, median)
with the CUDA-graph decoder (``graphed``, measure()'s default on the GPU) unless named
otherwise, at batch 1, 32 and 256, prompt 512, 256 new tokens, bfloat16. Each run
records its ``decoder``.

Random expert-choice routers keep about half of the surviving tokens at every step
(logits are symmetric around 0), not the capacity schedule a trained router learns
(Nr=3: 1, 2/3, 1/3 of all tokens). ``calibrate_routers`` shifts each router along
the mean direction of its inputs until its share matches the schedule, so the depth
statistics are those of a trained model; the realised shares are recorded.

Most of a run's time goes to the eager comparison decoders (on an H200, 9 variants at
batch 32 and 256, 2 of them eager, took 400 s with the profile unfinished); split a run to fit
a time limit:
``--part 1/3``, then ``--part 2/3 --merge``, ``--part 3/3 --merge`` (the last part profiles).
Every part times vanilla again and compares its own models with that vanilla. The result file is
rewritten after every measurement, so a run cut short keeps what it measured.
``--equal-memory`` adds the paper's other protocol (B=Max, MOR.md 4.2): every model of the run
also decodes at the largest batch whose peak memory stays within vanilla's at each batch, found
from the line through its measured peaks (a few tries; compiled decoders compile once per try),
with its speed-up against vanilla at vanilla's batch (``raw.equal_memory_speedup_vs_vanilla``;
the issue's targets stay the equal-batch ones). Limit it with ``--only``.
``--out`` writes (and, with ``--merge``, reads) another file than the default.
``--no-profile`` skips the closing torch.profiler pass (vanilla and mor3-ec-cache, with the graphed
and the graphed depth-wise decoders, at batch 32: host time, device-busy time, op and kernel counts,
top ops), which says where the time goes.

Targets: at batch >= 32, MoR Nr=3 (expert-choice, recursion-wise caching; and, reported beside it,
the fastest MoR Nr=3 of either router and KV strategy) decodes >= 1.5x vanilla's tokens/s (each
with its fastest decoder); recursive sharing's KV bytes <= recursion-wise caching's for every Nr,
router and batch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, target, write_result
from morsearch.config import DeploymentTarget, ModelConfig
from morsearch.measure import Measurement, measure
from morsearch.model import MoRModel, build_model
from morsearch.model.decoders import DECODERS

RESULTS_FILE = RESULTS / "decode_throughput.json"
# vanilla's decoders: the fastest of them is the speed every other model is compared with
ANCHORS = (
    "vanilla",
    "vanilla@graphed_depthwise",
    "vanilla@compiled",
    "vanilla@depthwise_compiled",
    "vanilla@rows",
    "vanilla@reference",
)


def base_shape(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "vocab_size": 256,
            "d_model": 64,
            "num_heads": 4,
            "num_kv_heads": 2,
            "ffn_dim": 176,
            "num_layers": 14,
            "max_seq_len": 64,
        }
    # SmolLM-360M width; 26 = 2 + 24 layers so Middle-Cycle divides for Nr = 2, 3 and 4
    return {
        "vocab_size": 49152,
        "d_model": 960,
        "num_heads": 15,
        "num_kv_heads": 5,
        "ffn_dim": 2560,
        "num_layers": 26,
        "max_seq_len": 1024,
    }


def variants(quick: bool) -> dict[str, tuple[ModelConfig, str]]:
    """name -> (config, decoder)."""
    base = base_shape(quick)
    found = {
        "vanilla": (ModelConfig(**base), "graphed"),
        "vanilla@compiled": (ModelConfig(**base), "graphed_compiled"),
        "vanilla@depthwise_compiled": (ModelConfig(**base), "graphed_depthwise_compiled"),
        "vanilla@rows": (ModelConfig(**base), "depthwise"),
        "vanilla@reference": (ModelConfig(**base), "reference"),
    }
    recursion = {"sharing": "middle_cycle"}
    for nr in (2, 3, 4):
        found[f"recursive-nr{nr}"] = (ModelConfig(**base, **recursion, num_recursions=nr), "graphed")
        for router, short in (("expert_choice", "ec"), ("token_choice", "tc")):
            for kv, kv_short in (("recursion_wise", "cache"), ("recursive_sharing", "share")):
                cfg = ModelConfig(**base, **recursion, num_recursions=nr, router=router, kv_strategy=kv)
                found[f"mor{nr}-{short}-{kv_short}"] = (cfg, "graphed")  # measure()'s default on the GPU
    for name in [n for n in found if not n.startswith("vanilla@")]:  # continuous depth-wise batching, graphed
        found[f"{name}@graphed_depthwise"] = (found[name][0], "graphed_depthwise")
    for decoder in ("lockstep", "depthwise", "depthwise_deferred", "reference"):
        found[f"mor3-ec-cache@{decoder}"] = (found["mor3-ec-cache"][0], decoder)
    found["mor3-ec-cache@compiled"] = (found["mor3-ec-cache"][0], "graphed_compiled")
    for name in ("mor3-ec-cache", "mor3-ec-share"):  # depth-wise batching with fused iterations
        found[f"{name}@depthwise_compiled"] = (found[name][0], "graphed_depthwise_compiled")
    return found


@torch.no_grad()
def calibrate_routers(model: MoRModel, tokens: torch.Tensor, iterations: int = 30) -> list[float]:
    """Make random expert-choice routers keep the capacity schedule's share of tokens.

    Router r's weight becomes w + c * u, with u the unit mean of its inputs; c is
    found by bisection so that step r runs ``capacity_r`` of the tokens in eval mode
    (per-token threshold). Returns the realised shares.
    """
    cfg = model.cfg
    if cfg.router != "expert_choice":
        return model(tokens).step_token_fraction.tolist()
    for step in range(1, cfg.num_recursions):
        network = model.router.networks[step]
        seen: list[torch.Tensor] = []
        hook = network.register_forward_hook(lambda module, args, out, seen=seen: seen.append(args[0].flatten(0, -2)))
        model(tokens)
        hook.remove()
        inputs = seen[0].float()  # (tokens, D) states the router scores (with padding entries)
        direction = inputs.mean(dim=0)
        direction /= direction.norm()
        weight = network.weight.detach().clone()
        spread = (inputs @ weight.float().T).std().item() / max((inputs @ direction).abs().mean().item(), 1e-6)
        low, high = -50 * spread, 50 * spread
        for _ in range(iterations):
            shift = (low + high) / 2
            network.weight.copy_(weight + shift * direction.to(weight.dtype))
            share = model(tokens).step_token_fraction[step].item()
            low, high = (shift, high) if share < cfg.step_capacities[step] else (low, shift)
        network.weight.copy_(weight + (low + high) / 2 * direction.to(weight.dtype))
    return model(tokens).step_token_fraction.tolist()


def block_statistics(model: MoRModel, decoder: str, batch: int, prompt_len: int, new_tokens: int) -> dict[str, float]:
    """Shared-block calls per generated token and rows per call, from one untimed generation."""
    device = model.embed.weight.device
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), device=device)
    continuation = torch.randint(0, model.cfg.vocab_size, (batch, new_tokens), device=device)  # as measure()
    generation = DECODERS[decoder](model).generate(prompt, new_tokens, continuation)
    decoded = batch * (new_tokens - 1)
    calls = max(generation.block_calls, 1)
    return {
        "block_calls_per_step": generation.block_calls / (new_tokens - 1),
        "rows_per_block_call": sum(generation.step_tokens) / calls,
        "mean_depth": sum(generation.step_tokens) / decoded,
    }


def profile_decode(model: MoRModel, decoder: str, batch: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    """Where the decode time goes: host time, device-busy time, op and kernel counts, top ops."""
    from torch.profiler import ProfilerActivity, profile

    device = model.embed.weight.device
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), device=device)
    continuation = torch.randint(0, model.cfg.vocab_size, (batch, new_tokens), device=device)
    run = DECODERS[decoder](model)
    run.generate(prompt, new_tokens, continuation)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run.generate(prompt, new_tokens, continuation)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    events = prof.key_averages()

    def device_us(event: Any) -> float:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

    top_level = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    by_device = sorted(events, key=device_us, reverse=True)[:12]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "wall_ms_profiled": wall_ms,
        "aten_host_ms": sum(e.cpu_time_total for e in top_level) / 1e3,
        "device_busy_ms": sum(device_us(e) for e in events) / 1e3,
        "aten_ops": len(top_level),
        "kernels": sum(e.count for e in events if device_us(e) > 0 and not e.key.startswith("aten::")),
        "top_device_ms": {e.key: device_us(e) / 1e3 for e in by_device},
        "top_host_self_ms": {e.key: e.self_cpu_time_total / 1e3 for e in by_host},
    }


def largest_batch_within(budget_bytes: int, points: list[tuple[int, int]], param_bytes: int) -> int:
    """The batch at which peak memory reaches ``budget_bytes`` on the line through two measurements.

    Peak memory grows about linearly with the batch (per-row K/V and activations over the
    weights): the line runs through the last two (batch, peak) points, or through the
    weights at batch 0 and the only point.
    """
    (b0, m0), (b1, m1) = ((0, param_bytes), points[-1]) if len(points) == 1 else (points[-2], points[-1])
    per_row = (m1 - m0) / (b1 - b0)  # the points' batches differ: equal_memory_run never measures one twice
    if per_row <= 0:
        return b1
    return max(1, math.floor(b1 + (budget_bytes - m1) / per_row))


def equal_memory_run(
    measure_at: Callable[[int], Measurement | None],
    budget_bytes: int,
    batch: int,
    record: dict[str, Any],
    tries: int = 3,
) -> dict[str, Any]:
    """The largest batch (of up to ``tries`` measured ones) whose peak stays within ``budget_bytes``.

    ``record`` is the model's measurement at ``batch``; ``measure_at`` measures another batch
    (None: out of memory). Returns that batch's figures and every try.
    """
    points = [(batch, int(record["peak_memory_bytes"]))]
    fits = {batch: record} if record["peak_memory_bytes"] <= budget_bytes else {}
    tried: list[dict[str, Any]] = []
    for _ in range(tries):
        guess = largest_batch_within(budget_bytes, points, int(record["param_bytes"]))
        if guess in {b for b, _ in points}:
            break  # the line points at a batch already measured: converged
        m = measure_at(guess)
        if m is None:
            tried.append({"batch": guess, "error": "oom"})
            break
        tried.append(
            {"batch": guess, "peak_memory_bytes": m.peak_memory_bytes, "decode_tokens_per_s": m.decode_tokens_per_s}
        )
        points.append((guess, m.peak_memory_bytes))
        if m.peak_memory_bytes <= budget_bytes:
            fits[guess] = m.to_dict()
    best = max(fits, default=None)
    found: dict[str, Any] = {"memory_budget_bytes": budget_bytes, "vanilla_batch": batch, "tries": tried}
    if best is not None:
        chosen = fits[best]
        found.update(
            batch=best,
            decode_tokens_per_s=chosen["decode_tokens_per_s"],
            peak_memory_bytes=chosen["peak_memory_bytes"],
            peak_vs_budget=chosen["peak_memory_bytes"] / budget_bytes,
        )
    return found


def anchor_record(runs: dict[str, dict[str, Any]], part: int, batch: int) -> dict[str, Any] | None:
    """The measurement of vanilla's fastest decoder at ``batch`` in ``part`` (None if not timed there)."""
    timed = [
        run["by_batch"][str(batch)]
        for run in runs.values()
        if run.get("anchor") and run["part"] == part and "decode_tokens_per_s" in run["by_batch"].get(str(batch), {})
    ]
    timed = [r for r in timed if math.isfinite(r["decode_tokens_per_s"])]
    return max(timed, key=lambda r: r["decode_tokens_per_s"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--only", nargs="+", default=None, help="variant names to run (default: all)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-profile", action="store_true", help="skip profiling vanilla and mor3-ec-cache")
    parser.add_argument("--profile-only", action="store_true", help="no measurements, only the profiling pass")
    parser.add_argument("--part", default=None, help="K/M: run every M-th variant from the K-th (split long runs)")
    parser.add_argument("--merge", action="store_true", help="add to the runs already in the result file")
    parser.add_argument(
        "--equal-memory",
        action="store_true",
        help="also decode each model at the largest batch within vanilla's peak memory (the paper's B=Max)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help=f"result file (default {RESULTS_FILE})")
    args = parser.parse_args()
    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    batches = args.batches or ([4] if args.quick else [1, 32, 256])
    prompt_len, new_tokens = (24, 12) if args.quick else (512, 256)
    repeats = args.repeats or (1 if args.quick else 2)
    dtype = "float32" if args.quick else "bfloat16"

    chosen = {k: v for k, v in variants(args.quick).items() if args.only is None or k in args.only}
    part, parts = map(int, args.part.split("/")) if args.part else (1, 1)
    # Every part times vanilla again: its runs are compared with the vanilla of the same part (same machine).
    chosen = {k: v for i, (k, v) in enumerate(chosen.items()) if k in ANCHORS or i % parts == part - 1}
    raw: dict[str, Any] = {
        "device_kind": device,
        "dtype": dtype,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "runs": {},
    }
    if args.merge and args.out.exists():  # runs of earlier parts, unless re-run now
        earlier = json.loads(args.out.read_text())["raw"]
        for name, run in earlier["runs"].items():  # an earlier part's vanilla stays, as that part's anchor
            remeasured = name in chosen and not args.profile_only
            kept = f"{name}#part{run.get('part', 1)}" if name in ANCHORS and remeasured else name
            if args.profile_only or kept not in chosen:
                raw["runs"][kept] = run
        if "profile" in earlier:
            raw["profile"] = earlier["profile"]
    runs: dict[str, dict[str, Any]] = raw["runs"]
    label = part  # runs[...]["part"]: a run added later is a part of its own, with its own vanilla
    if args.merge and not args.part:
        label = 1 + max((run.get("part", 1) for run in runs.values()), default=0)
    calibration_tokens = torch.randint(
        0, base_shape(args.quick)["vocab_size"], (4, prompt_len), generator=torch.Generator().manual_seed(1)
    ).to(device)

    def deployment(batch: int) -> DeploymentTarget:
        return DeploymentTarget(
            name=f"b{batch}",
            device=device,
            dtype=dtype,
            batch_size=batch,
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            repeats=repeats,
            warmup=0 if args.quick else 1,
        )

    def save() -> None:
        """After every measurement, so a run cut short keeps what it measured."""
        if not args.quick:
            write_result("decode_throughput", raw, summarise(raw, batches), out=args.out)

    # vanilla first: the equal-memory batches need its peak memory
    chosen = dict(sorted(chosen.items(), key=lambda item: item[0] not in ANCHORS))
    for name, (cfg, decoder) in ({} if args.profile_only else chosen).items():
        torch.manual_seed(0)
        model = build_model(cfg, device=device, dtype=getattr(torch, dtype)).eval()
        shares = calibrate_routers(model, calibration_tokens)
        runs[name] = {
            "part": label,
            "anchor": name in ANCHORS,
            "decoder": decoder,
            "config": cfg.model_dump(mode="json"),
            "calibrated_step_shares": shares,
            "by_batch": {},
        }

        def measure_at(batch: int, model: MoRModel = model, decoder: str = decoder) -> Measurement | None:
            try:
                return measure(model, deployment(batch), decoder=decoder)
            except torch.OutOfMemoryError:
                return None

        for batch in batches:
            m = measure_at(batch)
            if m is None:
                runs[name]["by_batch"][str(batch)] = {"error": "oom"}
                continue
            record = {key: value for key, value in m.to_dict().items() if key not in ("versions",)}
            if name.startswith("mor3"):  # one extra generation: only where the report needs it
                record.update(block_statistics(model, decoder, batch, prompt_len, new_tokens))
            runs[name]["by_batch"][str(batch)] = record
            print(
                f"{name:26s} B={batch:<4d} decode {m.decode_tokens_per_s:12.1f} tok/s  "
                f"peak {m.peak_memory_bytes / 2**20:9.1f} MiB  kv {m.kv_cache_bytes / 2**20:8.1f} MiB  "
                f"cv {m.decode_cv:.3f}  steps {[round(x, 2) for x in m.step_token_fraction]}",
                flush=True,
            )
            save()
            vanilla = anchor_record(runs, label, batch)
            if args.equal_memory and name not in ANCHORS and vanilla is not None:
                found = equal_memory_run(measure_at, vanilla["peak_memory_bytes"], batch, record)
                runs[name].setdefault("equal_memory", {})[str(batch)] = found
                print(f"{name:26s} within vanilla's B={batch} memory: {found}", flush=True)
                save()
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

    if not args.no_profile and part == parts:  # where the time goes, at the first batch the speed target covers
        batch = next((b for b in batches if b >= 32), batches[-1])
        raw["profile"] = {"batch": batch}
        profiled = ("vanilla", "vanilla@graphed_depthwise", "mor3-ec-cache", "mor3-ec-cache@graphed_depthwise")
        for name in profiled:
            if name not in chosen:
                continue
            cfg, decoder = variants(args.quick)[name]
            torch.manual_seed(0)
            model = build_model(cfg, device=device, dtype=getattr(torch, dtype)).eval()
            calibrate_routers(model, calibration_tokens)
            # 32 tokens show the per-step costs; profiling all 256 at batch 32 takes minutes per model
            raw["profile"][name] = profile_decode(model, decoder, batch, prompt_len, min(new_tokens, 32))
            print(f"profile {name:24s}", {k: v for k, v in raw["profile"][name].items() if not k.startswith("top")})
            save()
            del model

    targets = summarise(raw, batches)
    for t in targets:
        print(f"{t['name']:48s} {t['value']:.3f} (target {t['target']}) {'met' if t['met'] else 'MISSED'}")
    if args.quick:
        assert all(math.isfinite(r["decode_tokens_per_s"]) for run in runs.values() for r in run["by_batch"].values())
        print("quick run: result not written")
        return
    print("wrote", write_result("decode_throughput", raw, targets, out=args.out))


def summarise(raw: dict[str, Any], batches: list[int]) -> list[dict[str, Any]]:
    """Ratios against vanilla (its faster decoder) into ``raw``; the targets."""
    runs = raw["runs"]

    def rate(name: str, batch: int) -> float:
        record = runs.get(name, {}).get("by_batch", {}).get(str(batch), {})
        return record.get("decode_tokens_per_s", math.nan)

    def anchor(part: int, batch: int) -> float:
        """Vanilla's tokens/s (its faster decoder) as timed in ``part`` (nan if not timed there yet)."""
        record = anchor_record(runs, part, batch)
        return math.nan if record is None else record["decode_tokens_per_s"]

    ratios = {
        str(batch): {name: rate(name, batch) / anchor(run.get("part", 1), batch) for name, run in runs.items()}
        for batch in batches
    }
    raw["decode_speedup_vs_vanilla"] = ratios
    equal_memory = {  # the paper's B=Max: each model at its batch within vanilla's memory at this batch
        str(batch): {
            name: run["equal_memory"][str(batch)].get("decode_tokens_per_s", math.nan)
            / anchor(run.get("part", 1), batch)
            for name, run in runs.items()
            if str(batch) in run.get("equal_memory", {})
        }
        for batch in batches
    }
    if any(equal_memory.values()):
        raw["equal_memory_speedup_vs_vanilla"] = equal_memory

    def best(batch: int, models: str) -> float:
        """The fastest speed-up among ``models`` (a name prefix), each run against its own part's vanilla."""
        found = [x for n, x in ratios[str(batch)].items() if n.split("@")[0].split("#")[0].startswith(models)]
        return max((x for x in found if math.isfinite(x)), default=math.nan)

    targets = [
        target(f"mor3-ec-cache decode speedup vs vanilla (fastest decoders), batch {b}", best(b, "mor3-ec-cache"), 1.5)
        for b in batches
        if b >= 32
    ]
    targets += [  # the "MoR Nr=3" read widely: either router, either KV strategy
        target(
            f"fastest MoR-3 (any router and KV strategy) decode speedup vs vanilla, batch {b}", best(b, "mor3-"), 1.5
        )
        for b in batches
        if b >= 32
    ]
    worst = 0.0
    for name, run in runs.items():
        model, at, decoder = name.partition("@")  # a share run is compared with its cache twin's same decoder
        if model.endswith("-share"):
            twin = runs.get(model.removesuffix("-share") + "-cache" + at + decoder)
            for batch, record in run["by_batch"].items():
                if twin and "kv_cache_bytes" in record and "kv_cache_bytes" in twin["by_batch"].get(batch, {}):
                    worst = max(worst, record["kv_cache_bytes"] / twin["by_batch"][batch]["kv_cache_bytes"])
    if worst:
        targets.append(
            target("KV bytes, recursive sharing / recursion-wise (worst)", worst, 1.0, higher_is_better=False)
        )
    return targets


if __name__ == "__main__":
    main()
