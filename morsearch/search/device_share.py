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

Work that is not a batch counts too where it is long: a trial's set-up (data, the
model on its device, the trainer's own set-up) holds the locks until its first batch
ends (``SharedDeviceCallback(from_start=True)``), and a worker's imports of torch and
Lightning hold the CPU's (``device_locks.host_work``). On a 2-core CPU, a measurement
taken while another worker started read 0.26x of its rate alone
(``benchmarks/measurement_isolation.py``, its ``starting`` measurements).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from morsearch.config import DeploymentTarget
from morsearch.measure.harness import resolve_device as target_device
from morsearch.search.device_locks import DeviceLock
from morsearch.train.proxy import resolve_device as train_device


def device_key(device: str | torch.device | None) -> str:
    """The machine-wide name of a device (None or ``auto``: the GPU when there is one)."""
    device = train_device(device)
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return "cuda-" + re.sub(r"[^0-9A-Za-z-]", "", str(torch.cuda.get_device_properties(index).uuid))


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

    Args:
        device: The training device.
        from_start: Hold the locks from now until the end of the first batch, so that
            the run's set-up (data, model on the device, the trainer's own set-up) counts
            as work too; the caller then closes it when the run is over
            (``contextlib.closing``), as a run that fails before its first batch never
            reaches the trainer's teardown.
    """

    def __init__(self, device: str | torch.device | None, *, from_start: bool = False) -> None:
        self.locks = work_locks(device)
        self._held = False
        if from_start:
            self._begin()

    @property
    def waited_seconds(self) -> float:
        """Seconds the batches so far waited for their device (``DeviceLock.waited_seconds``)."""
        return sum(lock.waited_seconds for lock in self.locks)

    def _begin(self) -> None:
        if self._held:  # still held from the start: passing the gate now could deadlock with a measurement
            return
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
        self.close()

    def close(self) -> None:
        """Drop whatever is still held and close the lock files (safe to call again)."""
        self._end()
        for lock in self.locks:
            lock.close()
