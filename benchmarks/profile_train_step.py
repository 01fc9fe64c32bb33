"""Where a training step's GPU time goes: torch.profiler over train_step's models.

    python -m benchmarks.profile_train_step recursive mor_ec     # prints the top kernels of each
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.train_step import configs, morsearch_step
from morsearch.model import build_model


def profile_model(name: str, batch: int = 8, seq: int = 2048) -> None:
    cfg = configs(quick=False)[name]
    model = build_model(cfg, device="cuda")
    model.compile_layers()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = torch.randint(0, 256, (batch, seq + 1), device="cuda")
    x, y = data[:, :-1], data[:, 1:]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = morsearch_step(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(f"===== {name}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))


if __name__ == "__main__":
    for model_name in sys.argv[1:] or ["recursive", "mor_ec"]:
        profile_model(model_name)
