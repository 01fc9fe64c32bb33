"""Peak memory of a region of work: the GPU allocator's peak, or the CPU process's RSS.

Both report the *growth* over the memory held when the region starts, so what
else lives in the process (a trained model's fp32 copy, optimizer state, another
trial's tensors) does not count; the harness adds the weights it measured.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading
from types import TracebackType

import torch


def _resident_bytes() -> int | None:
    """Current resident set size, from /proc (Linux); None where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _max_resident_bytes() -> int:
    """Peak RSS of the process's whole life (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so reused memory shows as growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: ``growth_bytes`` is the peak memory growth inside the block.

    GPU: ``torch.cuda.max_memory_allocated`` after resetting the peak (exact for
    tensors; the caching allocator's reserve is not counted). CPU: a thread samples
    the resident set size every ``interval_s``; the process's lifetime peak RSS
    also counts when the block raised it, which catches spikes between samples.

    Args:
        device: The device whose memory is watched.
        interval_s: CPU sampling interval in seconds.
    """

    def __init__(self, device: torch.device, interval_s: float = 5e-4) -> None:
        self.device, self.interval_s = device, interval_s
        self.growth_bytes = 0
        self._base = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _resident_bytes() or 0)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        self._lifetime_before = _max_resident_bytes()
        self._base = self._peak = _resident_bytes() or self._lifetime_before
        if _resident_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, name="morsearch-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._peak = max(self._peak, _resident_bytes() or 0)
        lifetime = _max_resident_bytes()
        if lifetime > self._lifetime_before:  # the block set a new lifetime peak: that is exact
            self._peak = max(self._peak, lifetime)
        self.growth_bytes = max(0, self._peak - self._base)
