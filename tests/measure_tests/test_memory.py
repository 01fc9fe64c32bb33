"""Peak memory growth: a known allocation inside the block is seen, earlier memory is not."""

from __future__ import annotations

import pytest
import torch

from morsearch.measure.memory import PeakMemory

MiB = 2**20


def test_cpu_growth_sees_a_freed_allocation() -> None:
    before = torch.ones(16 * MiB // 4)  # held before the block: not growth
    with PeakMemory(torch.device("cpu"), interval_s=1e-4) as peak:
        spike = torch.ones(64 * MiB // 4)  # touched pages, freed before the block ends
        spike.add_(1)
        del spike
    assert 56 * MiB <= peak.growth_bytes < 64 * MiB + 16 * MiB
    del before


def test_cpu_growth_is_small_without_allocation() -> None:
    with PeakMemory(torch.device("cpu")) as peak:
        sum(range(1000))
    assert peak.growth_bytes < 8 * MiB


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_growth_is_the_allocator_peak() -> None:
    device = torch.device("cuda")
    held = torch.ones(MiB, device=device)
    with PeakMemory(device) as peak:
        spike = torch.ones(16 * MiB // 4, device=device)
        del spike
    assert peak.growth_bytes == 16 * MiB
    del held
