"""Timing discipline: timestamps that do not disturb the device, and robust summaries.

On CUDA, work is queued asynchronously, so a host clock read between kernel
launches measures the launches, not the work. ``Clock`` records CUDA events on the
stream instead (no synchronisation inside the timed region) and synchronises once
when the times are read. On CPU, torch ops run synchronously and the host clock is
exact.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Iterator, Sequence

import torch

# About 2.5 ms of an H200's clock: far longer than the host takes to launch a graph replay.
QUEUE_AHEAD_CYCLES = 5_000_000


class Clock:
    """Timestamps of the points of one timed region, relative to ``start()``.

    Args:
        device: The device whose work is timed.
        queue_ahead: On CUDA, hold the device at the start (a sleep kernel) while the host
            queues the region's first work, so that the region times the device's work and
            not the launch latency of an idle device (nvbench's blocking kernel). Only for a
            region whose first work is queued at once (a graph replay): it would hide the
            first milliseconds of a host-bound one.
    """

    def __init__(self, device: torch.device, queue_ahead: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.queue_ahead = queue_ahead and self.cuda
        self._marks: list[torch.cuda.Event | float] = []

    def _now(self) -> torch.cuda.Event | float:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Begin a region (after its warm-up); earlier marks are dropped."""
        if self.cuda:
            torch.cuda.synchronize()  # nothing queued before the region may count in it
        if self.queue_ahead:
            torch.cuda._sleep(QUEUE_AHEAD_CYCLES)
        self._marks = [self._now()]

    def mark(self) -> None:
        """Timestamp the point the device has reached in the queued work."""
        self._marks.append(self._now())

    def seconds(self) -> list[float]:
        """Seconds from ``start()`` to each mark, in order."""
        first, rest = self._marks[0], self._marks[1:]
        if self.cuda:
            torch.cuda.synchronize()
            assert isinstance(first, torch.cuda.Event)
            return [first.elapsed_time(event) / 1e3 for event in rest]  # type: ignore[arg-type]
        assert isinstance(first, float)
        return [float(mark) - first for mark in rest]  # type: ignore[arg-type]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Collect garbage now, then keep Python's cycle collector out of the timed region.

    As ``timeit`` does: a collection inside a host-bound region (an eager prefill, a
    small model's decode) would land in one repeat's time, and how much garbage there
    is depends on what ran before, e.g. an earlier measurement's decoders.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def inter_token_latencies(emission_times: Sequence[float], emissions: Sequence[Sequence[int]]) -> list[float]:
    """Seconds between consecutive tokens of each sequence.

    Args:
        emission_times: Time of each iteration that emitted tokens (index 0: the prefill).
        emissions: For each of those iterations, the sequences (batch rows) that emitted.
    """
    last: dict[int, float] = {}
    gaps = []
    for when, rows in zip(emission_times, emissions, strict=True):
        for row in rows:
            if row in last:
                gaps.append(when - last[row])
            last[row] = when
    return gaps
