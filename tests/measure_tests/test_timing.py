"""Timing discipline: clock, spread, percentiles, inter-token latencies."""

from __future__ import annotations

import gc
import math
import time

import pytest
import torch

from morsearch.measure.timing import (
    Clock,
    coefficient_of_variation,
    collector_paused,
    inter_token_latencies,
    percentile,
)


def test_clock_marks_are_relative_to_start_and_ordered() -> None:
    clock = Clock(torch.device("cpu"))
    time.sleep(0.01)  # before start(): must not count
    clock.start()
    time.sleep(0.02)
    clock.mark()
    time.sleep(0.02)
    clock.mark()
    first, second = clock.seconds()
    assert 0.02 <= first < 0.2
    assert second - first >= 0.02


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([2.0]) == 0.0
    assert coefficient_of_variation([1.0, 1.0, 1.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert math.isnan(percentile([], 50))


def test_inter_token_latencies_follow_each_sequence() -> None:
    # row 0 emits at t=0, 1, 3; row 1 at t=0 and 3 (it skipped the iteration at t=1)
    times = [0.0, 1.0, 2.0, 3.0]
    emissions = [[0, 1], [0], [], [0, 1]]
    assert sorted(inter_token_latencies(times, emissions)) == [1.0, 2.0, 3.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_clock_times_queued_work() -> None:
    clock = Clock(torch.device("cuda"))
    x = torch.randn(4096, 4096, device="cuda")
    clock.start()
    for _ in range(20):
        x = x @ x / 64
    clock.mark()
    assert clock.seconds()[0] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_queue_ahead_leaves_the_hosts_delay_before_the_first_launch_out() -> None:
    x = torch.randn(256, 256, device="cuda")
    measured = {}
    for queue_ahead in (False, True):
        clock = Clock(torch.device("cuda"), queue_ahead=queue_ahead)
        clock.start()
        time.sleep(0.001)  # the host is late to queue the region's work
        x = x @ x / 16
        clock.mark()
        measured[queue_ahead] = clock.seconds()[0]
    assert measured[False] >= 0.001 > 5 * measured[True]


def test_queue_ahead_does_nothing_on_the_cpu() -> None:
    clock = Clock(torch.device("cpu"), queue_ahead=True)
    clock.start()
    time.sleep(0.01)
    clock.mark()
    assert not clock.queue_ahead and clock.seconds()[0] >= 0.01


def test_collector_paused_restores_the_collector_as_it_found_it() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
