"""The advisory file locks through which workers share a device (the protocol: ``device_share``'s docstring).

Kept apart from ``device_share`` because it needs neither torch nor Lightning: a worker
takes the CPU's work lock around its own imports of them (``host_work``), which on a
small machine are seconds of CPU time that a CPU measurement must not share.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

# One folder per machine (and user); MORSEARCH_LOCK_DIR moves it, e.g. for tests.
LOCK_DIR_ENV = "MORSEARCH_LOCK_DIR"


def lock_dir() -> Path:
    user = getattr(os, "getuid", lambda: "")()
    folder = os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"morsearch-devices-{user}"
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


class DeviceLock:
    """The gate and busy locks of one device (``device_share``'s docstring); not shared between threads.

    ``waited_seconds`` adds up the time spent waiting for the locks: time this holder's
    trial spent on no device because another worker had it (a measurement, or the
    batches a measurement waits for), which is not the trial's own device time.
    """

    def __init__(self, key: str, folder: Path | None = None) -> None:
        self.key = key
        folder = folder or lock_dir()
        self._paths = {name: folder / f"{key}.{name}.lock" for name in ("gate", "busy")}
        self._files: dict[str, Any] = {}
        self.waited_seconds = 0.0

    def _flock(self, name: str, operation: int) -> None:
        if fcntl is None:
            return
        if name not in self._files:
            self._files[name] = open(self._paths[name], "a+b")  # noqa: SIM115 (kept open: flock lives on the fd)
        fcntl.flock(self._files[name].fileno(), operation)

    def begin_work(self) -> None:
        """Hold the device shared for one batch; waits while a measurement holds or awaits it."""
        if fcntl is None:
            return
        asked = time.perf_counter()
        self._flock("gate", fcntl.LOCK_SH)
        self._flock("gate", fcntl.LOCK_UN)
        self._flock("busy", fcntl.LOCK_SH)
        self.waited_seconds += time.perf_counter() - asked

    def end_work(self) -> None:
        if fcntl is not None:
            self._flock("busy", fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Have the device alone: no batch of another worker runs on it meanwhile."""
        if fcntl is None:
            yield
            return
        asked = time.perf_counter()
        self._flock("gate", fcntl.LOCK_EX)
        try:
            self._flock("busy", fcntl.LOCK_EX)
            self.waited_seconds += time.perf_counter() - asked
            try:
                yield
            finally:
                self._flock("busy", fcntl.LOCK_UN)
        finally:
            self._flock("gate", fcntl.LOCK_UN)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()  # closing drops any lock still held
        self._files.clear()


@contextlib.contextmanager
def host_work(key: str = "cpu") -> Iterator[DeviceLock]:
    """Hold ``key``'s device as work (shared) for a stretch of work that is not a batch.

    Imports and set-up keep a CPU busy for seconds; inside this, a measurement on that
    device waits for them as it waits for a batch. Never enter it while holding a
    device's work lock: taking one waits at the gate, where a pending measurement waits
    for the lock already held.
    """
    lock = DeviceLock(key)
    try:
        lock.begin_work()
        yield lock
    finally:
        lock.end_work()
        lock.close()
