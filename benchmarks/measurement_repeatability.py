"""Do measurements of one model in one process agree? Several ``measure()`` calls in a row, per model.

    python -m benchmarks.measurement_repeatability           # GPU: writes results/measurement_repeatability.json
    python -m benchmarks.measurement_repeatability --quick   # CPU smoke run (not written)

Issue 4 asks that two measurements of the same model in one process agree within 3 %
(median), on GPU. ``tests/measure_tests`` checks that with two calls of one small model,
which passes or fails by chance where the spread is near 3 % (docs/DECODING.md). This
benchmark measures the spread itself: ``--measurements`` calls of ``measure()`` per model,
one model after the other in one process, with the 3 % test's target (batch 32, prompt
256, 128 new tokens, 5 repeats). Per model and phase (prefill, decode) it reports every
measurement's median and repeats, and the spread (highest over lowest median, minus 1)
of all of them and of all but the process's first measurement, which earlier runs found
faster than the rest.

Models, smallest first: ``small`` is the 3 % test's (d 256, 4 layers: a host-bound
prefill of a few ms); ``medium`` is measurement_isolation's (d 512, 14 layers);
``large`` is decode_throughput's MoR-3 (d 960, 26 layers). The models measured later in
the process show whether the first-measurement effect belongs to the process or to each
model, and whether a prefill that is the device's work rather than the host's is steady.

Targets, one per model and phase: the spread of all its measurements <= 3 %, so that any
two of them agree within 3 %.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import target, write_result
from benchmarks.decode_throughput import base_shape
from benchmarks.measurement_isolation import MODEL
from morsearch.config import DeploymentTarget, ModelConfig
from morsearch.measure import measure

ROUTED = dict(vocab_size=64, num_heads=4, num_kv_heads=2, max_seq_len=512, router="expert_choice")
MODELS: dict[str, dict[str, Any]] = {
    "small": dict(ROUTED, d_model=256, ffn_dim=768, num_layers=4, num_recursions=2, sharing="cycle"),
    "medium": MODEL,  # measurement_isolation's
    # decode_throughput's MoR-3 (SmolLM-360M width, 26 layers): the prefill is the device's work
    "large": dict(base_shape(quick=False), num_recursions=3, sharing="middle_cycle", router="expert_choice"),
}
QUICK_MODELS: dict[str, dict[str, Any]] = {
    "small": dict(ROUTED, d_model=32, ffn_dim=64, num_layers=4, num_recursions=2, sharing="cycle", max_seq_len=64),
}
PHASES = ("prefill", "decode")


def spread(rates: list[float]) -> float:
    """Highest over lowest, minus 1: 0.03 means every two of them agree within 3 %."""
    return max(rates) / min(rates) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--measurements", type=int, default=6, help="measure() calls per model (at least 3)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.measurements < 3:
        parser.error(f"--measurements {args.measurements}: give at least 3 (the first, and two to compare)")
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    deployment = DeploymentTarget(
        device=device,
        batch_size=4 if args.quick else 32,
        prompt_len=16 if args.quick else 256,
        new_tokens=8 if args.quick else 128,
        repeats=3 if args.quick else 5,
        warmup=1 if args.quick else 2,
        dtype="float32" if device == "cpu" else "bfloat16",
    )

    raw: dict[str, Any] = {"target": deployment.model_dump(mode="json"), "models": {}}
    targets = []
    for name, fields in (QUICK_MODELS if args.quick else MODELS).items():
        model = ModelConfig(**fields)
        runs = []
        for _ in range(args.measurements):
            result = measure(model, deployment)
            runs.append({f"{phase}_tokens_per_s": getattr(result, f"{phase}_tokens_per_s") for phase in PHASES})
            runs[-1] |= {f"{phase}_seconds": list(getattr(result, f"{phase}_seconds")) for phase in PHASES}
            shown = ", ".join(f"{phase} {runs[-1][f'{phase}_tokens_per_s']:12,.0f}" for phase in PHASES)
            print(f"{name:7s} measurement {len(runs)}: {shown} tokens/s", flush=True)
        summary = {}
        for phase in PHASES:
            rates = [run[f"{phase}_tokens_per_s"] for run in runs]
            summary[phase] = {"spread": spread(rates), "spread_without_first": spread(rates[1:])}
            print(
                f"{name:7s} {phase:7s} spread {summary[phase]['spread']:.3f}, "
                f"without the first {summary[phase]['spread_without_first']:.3f}"
            )
            targets.append(
                target(
                    f"{name}: {phase} spread of {len(rates)} measurements",
                    summary[phase]["spread"],
                    0.03,
                    higher_is_better=False,
                )
            )
        raw["models"][name] = {"config": model.model_dump(mode="json"), "measurements": runs, "summary": summary}

    if args.quick and not args.out:
        print("quick run: result not written")
        return
    print("wrote", write_result("measurement_repeatability", raw, targets, out=args.out))


if __name__ == "__main__":
    main()
