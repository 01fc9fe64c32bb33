"""Proxy training speed: the Lightning path against a plain compiled GPT step, phases, GPU busy share.

    python -m benchmarks.proxy_throughput           # GPU: writes benchmarks/results/proxy_throughput.json
    python -m benchmarks.proxy_throughput --quick   # CPU smoke run with tiny shapes (not written)

Four parts, one run:

1. overhead   training tokens/s at one shape (the model benchmark's: benchmarks/train_step.py)
              anchor     plain GPT, whole model compiled, bare loop (train_step.AnchorGPT)
              plain      morsearch vanilla model, compile_layers, bare loop
              lightning  the same model through run_proxy's path: MorDataModule batches from the
                         builtin corpus, MoRLightningModule, Trainer (bf16, clipping, schedule)
              Target: lightning >= 0.9 x anchor (framework overhead <= 10 %).
2. phases     a fresh worker process runs two proxy trials at the GPU quickstart budget; each
              trial's wall time is split into imports (the first trial: from the process's
              start to the end of ``import morsearch.train``), build, compile, setup, train,
              validate, and other (the rest: CUDA's context, the gaps between phases).
              Target: everything but train <= 10 % of the trial. The run of 2026-12-04 (H200)
              met it for a worker's next trial (0.074) and missed it for its first (0.368):
              its imports took 19-22 s on that host (notes/proxy_throughput.md: the import
              itself, not bytecode). That run timed the imports as three whole interpreters,
              their exit included, and ran the trials in the benchmark's own process.
3. busy       (run last) share of wall time the GPU spends in kernels (torch.profiler) for the quickstart
              model at growing micro-batches, and aggregate tokens/s of several trials sharing
              one GPU (separate processes), to show how to fill a large GPU with small proxies.
4. validation the quickstart trial's validations (8, at a tenth of its training) with one
              training batch per forward against run_proxy's default (as many as fit), in one
              process after a warm-up run: seconds and the validation NLL of each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import target, write_result
from benchmarks.train_step import AnchorGPT, anchor_step, base_shape, morsearch_step, time_training
from morsearch.config import DataConfig, ModelConfig, TrainBudget
from morsearch.model import build_model, sizing
from morsearch.train import run_proxy
from morsearch.train.proxy import make_trainer, planned_steps, prepare, validation_batch_size

# The GPU quickstart trial: a 3M-parameter Middle-Cycle MoR at 5e14 training FLOPs (17M tokens, ~1,000 steps);
# eager, since compiling costs more than it saves on a run this short.
GPU_QUICKSTART_MODEL = dict(
    vocab_size=256,
    d_model=256,
    num_heads=4,
    num_kv_heads=2,
    ffn_dim=688,
    num_layers=8,
    max_seq_len=256,
    num_recursions=3,
    sharing="middle_cycle",
    router="expert_choice",
)
GPU_QUICKSTART_BUDGET = dict(kind="flops", value=5e14, batch_size=64, seq_len=256, compile=False)
QUICKSTART_DATA = DataConfig(builtin_tokens=2_000_000)  # fixed size, as search_spaces/quickstart.yaml does
CPU_QUICK_MODEL = dict(GPU_QUICKSTART_MODEL, d_model=32, ffn_dim=64, max_seq_len=64)
CPU_QUICK_BUDGET = dict(kind="flops", value=5e9, batch_size=8, seq_len=64, compile=False)


class StepTimer(pl.Callback):
    """Steady-state tokens/s between two optimizer steps (device synced at both ends)."""

    def __init__(self, start_step: int, end_step: int, tokens_per_step: int, device: torch.device) -> None:
        self.start_step, self.end_step, self.tokens_per_step, self.device = (
            start_step,
            end_step,
            tokens_per_step,
            device,
        )
        self.t0 = self.t1 = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.start_step:
            self.t0 = self._now()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.end_step:
            self.t1 = self._now()

    @property
    def tokens_per_s(self) -> float:
        return (self.end_step - self.start_step) * self.tokens_per_step / (self.t1 - self.t0)


class BusyMeter(pl.Callback):
    """GPU kernel time / wall time over a window of steps, from torch.profiler's CUDA events."""

    def __init__(self, start_step: int, end_step: int) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.profiler: torch.profiler.profile | None = None
        self.busy = float("nan")

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.start_step and torch.cuda.is_available():
            torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.wall = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.end_step and self.profiler is not None:
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - self.wall) * 1e6
            self.profiler.__exit__(None, None, None)
            intervals = sorted(
                (e.time_range.start, e.time_range.end)
                for e in self.profiler.events()
                if e.device_type == torch.autograd.DeviceType.CUDA
            )
            busy, end = 0.0, -math.inf
            for start, stop in intervals:  # union of kernel intervals: overlapping streams count once
                if stop > end:
                    busy += stop - max(start, end)
                    end = stop
            self.busy = busy / wall_us
            self.profiler = None


def lightning_rate(
    cfg: ModelConfig, budget: TrainBudget, device: torch.device, warmup: int, steps: int, busy: bool = False
) -> dict[str, float]:
    """Steady tokens/s (and GPU busy share) of run_proxy's Lightning path, validation off."""
    module, datamodule, _ = prepare(cfg, budget, QUICKSTART_DATA, device)
    if budget.compile:
        module.compile_model()
    total = warmup + steps
    timer = StepTimer(warmup, total, budget.tokens_per_step, device)
    meter = BusyMeter(warmup, total)
    trainer = make_trainer(budget, device, total, eval_every=total + 1, callbacks=[timer, meter] if busy else [timer])
    module.total_steps = total
    trainer.fit(module, datamodule=datamodule)
    return {"tokens_per_s": timer.tokens_per_s, "busy_fraction": meter.busy}


def overhead(quick: bool, device: torch.device) -> dict[str, Any]:
    cfg = ModelConfig(**base_shape(quick), num_layers=8 if quick else 20)
    batch, seq = (2, 32) if quick else (8, 2048)
    steps, warmup = (2, 1) if quick else (10, 4)
    print(f"[overhead] {cfg.unique_parameters() / 1e6:.1f}M params, batch {batch} x {seq}")
    torch.manual_seed(0)
    anchor = AnchorGPT(cfg).to(device)
    compiled = torch.compile(anchor) if device.type == "cuda" else anchor
    rates = {"anchor": time_training("anchor", compiled, anchor_step, batch, seq, steps, warmup)["tokens_per_s"]}
    del anchor, compiled
    torch.manual_seed(0)
    model = build_model(cfg, device=device)
    if device.type == "cuda":
        model.compile_layers()
    rates["plain"] = time_training("plain", model, morsearch_step, batch, seq, steps, warmup)["tokens_per_s"]
    del model
    budget = TrainBudget(kind="steps", value=1, batch_size=batch, seq_len=seq, compile=device.type == "cuda")
    rates["lightning"] = lightning_rate(cfg, budget, device, warmup, 3 * steps)["tokens_per_s"]
    print(f"{'lightning':10s} {rates['lightning']:12,.0f} tok/s")
    return {
        "batch": batch,
        "seq_len": seq,
        "params": cfg.unique_parameters(),
        "tokens_per_s": rates,
        "lightning_vs_anchor": rates["lightning"] / rates["anchor"],
        "lightning_vs_plain": rates["lightning"] / rates["plain"],
    }


FRESH_WORKER = (  # the first statement is the import a worker pays; then two trials
    "import sys, time; import morsearch.train; imported = time.perf_counter();"
    "from benchmarks.proxy_throughput import worker_trials; worker_trials(imported, sys.argv[1] == '1', sys.argv[2])"
)


def worker_trials(imported: float, quick: bool, device: str) -> None:
    """In a fresh worker process: two quickstart trials, printed as JSON with their clock stamps."""
    cfg, budget = quickstart(quick)
    trials = []
    for _ in range(2):
        start = time.perf_counter()
        result = run_proxy(cfg, budget, QUICKSTART_DATA, device=device)
        trials.append(
            {
                "start": start,
                "end": time.perf_counter(),
                "steps": result.steps,
                "val_nll": result.val_nll,
                "train_tokens_per_s": result.train_tokens_per_s,
                "phase_seconds": result.phase_seconds,
            }
        )
    print(json.dumps({"imported": imported, "trials": trials}))


def phases(quick: bool, device: torch.device) -> dict[str, Any]:
    """A fresh worker's first trial (its imports, the corpus, CUDA's context) and its next one.

    Stamps of ``time.perf_counter`` (the system's monotonic clock on Linux, shared between
    processes) from before the worker starts to the end of each trial: the first trial
    counts the worker's start-up and imports, not its exit.
    """
    started = time.perf_counter()
    command = [sys.executable, "-c", FRESH_WORKER, "1" if quick else "0", str(device)]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    report = json.loads(output.strip().splitlines()[-1])
    trials = []
    for label, trial in zip(("first", "next"), report["trials"], strict=True):
        begin = started if label == "first" else trial["start"]
        wall = trial["end"] - begin
        seconds = {"imports": report["imported"] - started if label == "first" else 0.0, **trial["phase_seconds"]}
        seconds["other"] = wall - sum(seconds.values())
        print(f"[phases] {label} trial {wall:.2f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
        trials.append(
            {
                "trial": label,
                "steps": trial["steps"],
                "val_nll": trial["val_nll"],
                "train_tokens_per_s": trial["train_tokens_per_s"],
                "phase_seconds": seconds,
                "trial_seconds": wall,
                "not_training_fraction": (wall - seconds["train"]) / wall,
            }
        )
    cfg, budget = quickstart(quick)
    return {"params": cfg.unique_parameters(), "budget": budget.model_dump(mode="json"), "trials": trials}


def concurrent_rate(workers: int, quick: bool) -> float:
    """Aggregate training tokens/s of ``workers`` quickstart trials sharing the GPU at once."""
    code = (
        "import json, sys; from benchmarks.proxy_throughput import QUICKSTART_DATA, quickstart;"
        "from morsearch.train import run_proxy; cfg, budget = quickstart(sys.argv[1] == '1');"
        "r = run_proxy(cfg, budget, QUICKSTART_DATA); print(json.dumps([r.tokens_seen, r.phase_seconds['train']]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, "1" if quick else "0"], stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    outputs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    # overlapping trains: total tokens over the longest training phase
    return sum(tokens for tokens, _ in outputs) / max(seconds for _, seconds in outputs)


def quickstart(quick: bool) -> tuple[ModelConfig, TrainBudget]:
    """The GPU quickstart trial (or its CPU-sized stand-in)."""
    if quick:
        return ModelConfig(**CPU_QUICK_MODEL), TrainBudget(**CPU_QUICK_BUDGET)
    return ModelConfig(**GPU_QUICKSTART_MODEL), TrainBudget(**GPU_QUICKSTART_BUDGET)


def busy(quick: bool, device: torch.device) -> dict[str, Any]:
    cfg, budget = quickstart(quick)
    per_batch = {}
    for factor in (1, 4) if quick else (1, 4, 16):
        scaled = budget.replace(batch_size=budget.batch_size * factor)
        rate = lightning_rate(cfg, scaled, device, warmup=2 if quick else 10, steps=2 if quick else 20, busy=True)
        per_batch[scaled.batch_size] = rate
        shown = f"{rate['tokens_per_s']:12,.0f} tok/s, GPU busy {rate['busy_fraction']:.2f}"
        print(f"[busy] batch {scaled.batch_size:4d}: {shown}")
    concurrent = {}
    for workers in (1, 2) if quick else (1, 2, 4):
        concurrent[workers] = concurrent_rate(workers, quick)
        print(f"[busy] {workers} trials sharing the device: {concurrent[workers]:12,.0f} tok/s in all")
    return {"by_batch_size": per_batch, "concurrent_trials_tokens_per_s": concurrent}


def validation(quick: bool, device: torch.device) -> dict[str, Any]:
    """The quickstart trial's validations, one training batch per forward against the default."""
    cfg, budget = quickstart(quick)
    short = budget.replace(value=budget.value / 10)  # a validation costs the same whatever the training's length
    short = short.replace(eval_every=max(1, (planned_steps(cfg, short) or 8) // 8))
    runs = {}
    for label, size in (("warm-up", None), ("one training batch", budget.batch_size), ("default", None)):
        trial_budget = short.replace(val_batch_size=size)
        result = run_proxy(cfg, trial_budget, QUICKSTART_DATA, device=device)
        runs[label] = {
            "val_batch_size": validation_batch_size(cfg, trial_budget),
            "evaluations": len(result.curve),
            "validate_seconds": result.phase_seconds["validate"],
            "val_nll": result.val_nll,
        }
        print(f"[validation] {label}: {runs[label]}")
    del runs["warm-up"]  # the first run in a process pays the kernels' first loads
    return {"budget": short.model_dump(mode="json"), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "phases", "busy", "validation"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.quick:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the concurrent trials must stay on the CPU too
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg, budget = quickstart(args.quick)
    raw: dict[str, Any] = {"quickstart_training_flops_per_token": sizing.training_flops_per_token(cfg, budget.seq_len)}
    targets: list[dict[str, Any]] = []

    def save() -> None:
        """After every part, so a run cut short by a time limit keeps the parts it measured."""
        if not args.quick:
            print("wrote", write_result("proxy_throughput", raw, targets))

    if "overhead" not in args.skip:
        raw["overhead"] = overhead(args.quick, device)
        targets.append(target("lightning_vs_anchor_tokens_per_s", raw["overhead"]["lightning_vs_anchor"], 0.9))
        save()
    if "phases" not in args.skip:
        raw["phases"] = phases(args.quick, device)
        first, following = raw["phases"]["trials"]
        targets.append(
            target("not_training_fraction_first_trial", first["not_training_fraction"], 0.10, higher_is_better=False)
        )
        targets.append(
            target("not_training_fraction_next_trial", following["not_training_fraction"], 0.10, higher_is_better=False)
        )
        save()
    if "validation" not in args.skip:
        raw["validation"] = validation(args.quick, device)
        save()
    if "busy" not in args.skip:  # the longest part last: a run cut by a time limit keeps the others
        raw["busy"] = busy(args.quick, device)
        save()
    for t in targets:
        print(f"{t['name']:40s} {t['value']:.3f} (target {t['target']}, {'met' if t['met'] else 'NOT met'})")
    if args.quick:
        print("quick run: result not written")


if __name__ == "__main__":
    main()
