"""Measurements that have their device to themselves while other workers train on it.

Several workers may train on one GPU (``--workers`` above ``--gpus``) or on one CPU,
but a throughput or latency measurement taken while another process trains on the same
device measures that load too: on an H200 shared by 12 searches, runs of one seed
parted from their second trial on (docs/SEARCH_SPACE.md). So each worker's training
and validation batches and each measurement coordinate through two advisory file
locks per device, in a folder shared by the machine's workers:

    work (one batch)            measurement
    gate: shared, then released   gate: exclusive (no new batch starts while held)
    busy: shared for the batch    busy: exclusive (waits for the batches in flight)

The gate keeps a stream of overlapping batches from starving a waiting measurement:
a batch only passes through it, so the measurement gets it at once, and then waits
for no more than the batches already running. A batch's host-side end can precede its
kernels; the measurement's warm-up absorbs that tail.

Devices are named by what the hardware is, not by how a process sees it: a CUDA
device by its UUID (every worker started with ``--gpus`` sees its GPU as ``cuda:0``),
the CPU by ``cpu``. Training on a GPU also counts as work on the CPU, whose cores
launch its kernels, so a CPU measurement (an edge target) waits for every worker of
the machine, a GPU measurement only for those on its GPU. Where ``fcntl`` is missing
(Windows) nothing is coordinated.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from morsearch.config import DeploymentTarget
from morsearch.measure.harness import resolve_device as target_device
from morsearch.train.proxy import resolve_device as train_device

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


def device_key(device: str | torch.device | None) -> str:
    """The machine-wide name of a device (None or ``auto``: the GPU when there is one)."""
    device = train_device(device)
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return "cuda-" + re.sub(r"[^0-9A-Za-z-]", "", str(torch.cuda.get_device_properties(index).uuid))


class DeviceLock:
    """The gate and busy locks of one device (module docstring); not shared between threads.

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
def measuring_alone(target: DeploymentTarget) -> Iterator[DeviceLock]:
    """Hold the target's device exclusively for one measurement (module docstring); yields its lock."""
    lock = DeviceLock(device_key(target_device(target)))  # a CUDA target without a GPU fails here, as in measure()
    try:
        with lock.exclusive():
            yield lock
    finally:
        lock.close()


def work_locks(device: str | torch.device | None) -> list[DeviceLock]:
    """The locks a batch on ``device`` holds: its own and, for a GPU, the CPU's (in that order)."""
    keys = [device_key(device)]
    if keys[0] != "cpu":
        keys.append("cpu")
    return [DeviceLock(key) for key in keys]


class SharedDeviceCallback(pl.Callback):
    """Marks every training and validation batch as work on its device (module docstring).

    Every batch takes its locks in the same order and a measurement holds one device's
    locks only, so no set of workers can deadlock.
    """

    def __init__(self, device: str | torch.device | None) -> None:
        self.locks = work_locks(device)
        self._held = False

    @property
    def waited_seconds(self) -> float:
        """Seconds the batches so far waited for their device (``DeviceLock.waited_seconds``)."""
        return sum(lock.waited_seconds for lock in self.locks)

    def _begin(self) -> None:
        for lock in self.locks:
            lock.begin_work()
        self._held = True

    def _end(self) -> None:
        if self._held:
            for lock in reversed(self.locks):
                lock.end_work()
            self._held = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._begin()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._end()

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._begin()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._end()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._end()
        for lock in self.locks:
            lock.close()
