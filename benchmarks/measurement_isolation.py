"""Does a measurement stay true while other workers train on its device?

    python -m benchmarks.measurement_isolation           # GPU: writes results/measurement_isolation.json
    python -m benchmarks.measurement_isolation --quick   # CPU smoke run (not written)

A search may run several workers per GPU (``--workers`` above ``--gpus``): they train
side by side, and each trial ends with a throughput measurement on the same device.
One model is measured (``measure()``, the search's defaults) in one run:

    alone      twice before the trainers start and twice after they stop (the anchor:
               its median, and its spread)
    shared     while ``--trainers`` worker processes train proxies on the device
    isolated   the same, inside ``device_share.measuring_alone`` as the search's
               objective does: the trainers pause at their next batch until it is done
    starting   isolated too, but while the trainers start (imports, data, model
               building, the trainer's set-up), from their launch until each has
               trained a batch: the trainers hold their locks for that as a search's
               workers do (``host_work``, ``from_start``); without that, on a 2-core
               CPU these read 0.26x alone

Target (issue 4's repeatability, applied to a shared device): the isolated measurement's
decode tokens/s within 3 % of the alone median. The shared one is reported beside it, as
is what isolation costs the trainers (their training steps per second while the
measurements ran against before them).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import target, write_result
from morsearch.config import DataConfig, DeploymentTarget, ModelConfig, TrainBudget

# torch, Lightning and the harness are imported inside the functions: a spawned trainer
# imports this module first, and its heavy imports must happen under its CPU work lock
# (run_trainer), as a search worker's do, or the `starting` measurements would see them.

MODEL = dict(vocab_size=8192, d_model=512, num_heads=8, num_kv_heads=4, ffn_dim=1408, num_layers=14,
             max_seq_len=512, num_recursions=3, sharing="middle_cycle", router="expert_choice")  # fmt: skip
TRAINER_MODEL = dict(vocab_size=256, d_model=256, num_heads=4, num_kv_heads=2, ffn_dim=688, num_layers=6,
                     max_seq_len=256, num_recursions=2, sharing="cycle", router="expert_choice")  # fmt: skip
QUICK_MODEL = dict(vocab_size=256, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=128, num_layers=4,
                   max_seq_len=64, num_recursions=2, sharing="cycle", router="expert_choice")  # fmt: skip


def run_trainer(seconds: float, quick: bool, device: str, started: Any, steps: Any) -> None:
    """One worker's training on the shared device, holding its locks as the search's objective does."""
    from morsearch.search.device_locks import host_work

    with host_work():  # the imports, as SearchObjective does
        import pytorch_lightning as pl

        from morsearch.search.device_share import SharedDeviceCallback
        from morsearch.train import run_proxy

    class Count(pl.Callback):
        def on_train_batch_end(self, *_args: Any) -> None:
            with steps.get_lock():
                steps.value += 1
            started.set()

    model = ModelConfig(**(QUICK_MODEL if quick else TRAINER_MODEL))
    budget = TrainBudget(kind="seconds", value=seconds, batch_size=8 if quick else 32, seq_len=32 if quick else 256)
    data = DataConfig(source="builtin", builtin_tokens=200_000 if quick else 5_000_000)
    sharing = SharedDeviceCallback(device, from_start=True)  # the set-up until the first batch, as in a trial
    with contextlib.closing(sharing):
        run_proxy(model, budget, data, device=device, callbacks=[sharing, Count()])


def decode_rate(model: ModelConfig, deployment: DeploymentTarget, isolated: bool) -> dict[str, float]:
    from morsearch.measure import measure
    from morsearch.search.device_share import measuring_alone

    with measuring_alone(deployment) if isolated else contextlib.nullcontext():
        result = measure(model, deployment)
    return {"decode_tokens_per_s": result.decode_tokens_per_s, "decode_cv": result.decode_cv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--trainers", type=int, default=None, help="training workers beside the measurement")
    parser.add_argument("--rounds", type=int, default=3, help="shared and isolated measurements each")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainers = args.trainers or (1 if args.quick else 4)
    model = ModelConfig(**(QUICK_MODEL if args.quick else MODEL))
    deployment = DeploymentTarget(
        device=device,
        batch_size=4 if args.quick else 32,
        prompt_len=16 if args.quick else 128,
        new_tokens=16 if args.quick else 64,
        dtype="float32" if device == "cpu" else "bfloat16",
    )

    alone = [decode_rate(model, deployment, isolated=False) for _ in range(2)]
    context = multiprocessing.get_context("spawn")
    steps, started = context.Value("l", 0), [context.Event() for _ in range(trainers)]
    workers = [context.Process(target=run_trainer, args=(600.0, args.quick, device, event, steps)) for event in started]
    for worker in workers:
        worker.start()
    try:
        starting = []
        deadline = time.perf_counter() + 300
        while not all(event.is_set() for event in started):
            if time.perf_counter() > deadline:
                raise SystemExit("a training worker did not start its first batch within 300 s")
            starting.append(decode_rate(model, deployment, isolated=True))
        time.sleep(2.0)  # every trainer in its stride
        window_start, steps_before = time.perf_counter(), steps.value
        time.sleep(5.0)
        free_rate = (steps.value - steps_before) / (time.perf_counter() - window_start)
        shared, isolated = [], []
        window_start, steps_before = time.perf_counter(), steps.value
        for _ in range(args.rounds):  # interleaved, so both see the same trainers
            shared.append(decode_rate(model, deployment, isolated=False))
            isolated.append(decode_rate(model, deployment, isolated=True))
        measuring_rate = (steps.value - steps_before) / (time.perf_counter() - window_start)
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()
    alone += [decode_rate(model, deployment, isolated=False) for _ in range(2)]

    anchor = statistics.median(r["decode_tokens_per_s"] for r in alone)
    alone_rates = [r["decode_tokens_per_s"] for r in alone]
    ratio = {
        name: statistics.median(r["decode_tokens_per_s"] for r in runs) / anchor
        for name, runs in (("shared", shared), ("isolated", isolated), ("starting", starting))
        if runs
    }
    raw = {
        "model": model.model_dump(mode="json"),
        "target": deployment.model_dump(mode="json"),
        "trainers": trainers,
        "alone": alone,
        "shared": shared,
        "isolated": isolated,
        "starting": starting,
        "starting_furthest_from_alone": max(
            (abs(r["decode_tokens_per_s"] / anchor - 1) for r in starting), default=None
        ),
        "decode_vs_alone": ratio,
        "alone_spread": (max(alone_rates) - min(alone_rates)) / anchor,
        "trainer_steps_per_s": {"before": free_rate, "while_measuring": measuring_rate},
    }
    print(f"alone     {', '.join(f'{rate:.0f}' for rate in alone_rates)} tokens/s (spread {raw['alone_spread']:.3f})")
    for name, value in ratio.items():
        rates = ", ".join(f"{run['decode_tokens_per_s']:.0f}" for run in raw[name])
        print(f"{name:9s} {rates} tokens/s: {value:.3f}x alone")
    print(f"trainers: {free_rate:.1f} steps/s before, {measuring_rate:.1f} while measuring")
    targets = [
        target(
            f"isolated decode tokens/s beside {trainers} training workers, deviation from alone",
            abs(ratio["isolated"] - 1.0),
            0.03,
            higher_is_better=False,
        )
    ]
    for item in targets:
        print(item["name"], f"{item['value']:.3f}", "met" if item["met"] else "MISSED")
    if not args.quick:
        print("wrote", write_result("measurement_isolation", raw, targets, args.out))


if __name__ == "__main__":
    main()
