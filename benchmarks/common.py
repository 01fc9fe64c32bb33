"""What every benchmark result records: device, versions, date, raw figures and targets."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for package in ("torch", "pytorch-lightning", "torchmetrics", "optuna", "sqlalchemy", "morsearch"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        found["morsearch_commit"] = commit.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def target(name: str, value: float, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = value >= goal if higher_is_better else value <= goal
    return {"name": name, "value": value, "target": goal, "met": bool(met)}


def write_result(name: str, raw: dict[str, Any], targets: list[dict[str, Any]], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "device": device_name(),
        "versions": versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "raw": raw,
        "targets": targets,
    }
    # whole or not at all: benchmarks rewrite their file as they go and may be killed mid-way,
    # and a torn file would lose every run that --resume could have kept
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def die_with_parent(parent_pid: int) -> None:
    """Process-pool initializer: the worker ends when the benchmark's process does, even by SIGKILL.

    Without it, the workers of a benchmark cut short by ``timeout`` train on, holding the
    GPU and the output pipe (a device call then runs to its limit). Linux only; elsewhere
    the workers outlive a killed benchmark as before.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # from <sys/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the benchmark died before the line above took effect
        os._exit(1)
