"""The benchmarks' process pools end with the benchmark, even when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A benchmark stand-in: a spawn pool (as the benchmarks use), one worker busy for a
# minute; it prints the worker's pid, then kills itself as `timeout -s KILL` would.
KILLED_BENCHMARK = textwrap.dedent(
    """
    import concurrent.futures as cf, multiprocessing, os, signal, sys, time
    from benchmarks.common import die_with_parent

    options = dict(initializer=die_with_parent, initargs=(os.getpid(),)) if sys.argv[1] == "guarded" else {}
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), **options)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 60)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _running(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _worker_after_kill(mode: str) -> tuple[int, bool]:
    """The pool worker's pid, and whether it still runs 10 s after its benchmark was killed."""
    benchmark = subprocess.Popen([sys.executable, "-c", KILLED_BENCHMARK, mode], cwd=REPO, stdout=subprocess.PIPE)
    assert benchmark.stdout is not None
    with benchmark.stdout:  # the pid, then wait for the kill, not for the pipe the worker holds
        pid = int(benchmark.stdout.readline())
    assert benchmark.wait(timeout=60) == -9
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pid, _running(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="die_with_parent is Linux only")
def test_a_killed_benchmark_takes_its_pool_workers_with_it() -> None:
    _, alive = _worker_after_kill("guarded")
    assert not alive
    pid, alive = _worker_after_kill("bare")  # the control: without it, the worker trains on
    try:
        assert alive
    finally:
        if alive:
            os.kill(pid, signal.SIGKILL)
