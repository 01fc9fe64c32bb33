"""How many workers one store holds: ask/tell with instant objectives against SQLite and PostgreSQL.

For 1, 8, 32 and 64 concurrent worker processes, each backend, two loops:

* ``optuna``: plain ``study.ask()`` / ``study.tell()`` (what the storage itself sustains);
* ``morsearch``: morsearch's ``Worker`` (claim under a cross-process lock for an exact
  total, heartbeat thread, stale-trial sweep, record write after ``tell``).

Reported per run: finished trials per second (all workers together) and the p50/p99
latency of one round trip (ask + tell for ``optuna``; one whole trial cycle for
``morsearch``). A real proxy trial trains for seconds to minutes, so a store that
sustains R trials/s serves about R x (trial seconds) workers before it is the
bottleneck; the result names that ceiling for a 30 s trial.

Run: ``python -m benchmarks.storage_scaling`` (about 6 minutes), or ``--quick`` (1 and
8 workers, seconds). PostgreSQL runs against ``MORSEARCH_BENCH_PG`` (default: the
local test server) and is skipped when none answers. A CPU benchmark: no GPU needed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa

from benchmarks.common import target, write_result
from morsearch import store
from morsearch.search.study import create_study, load_study, open_storage
from morsearch.search.worker import GracefulStop, Outcome, Worker

PG_URL = os.environ.get("MORSEARCH_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REAL_TRIAL_SECONDS = 30.0  # a short proxy trial on a GPU, for the worker ceiling


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_int("y", 0, 100)
    return x + y / 100, (1 - x) + (100 - y) / 100


def _optuna_loop(url: str, seconds: float, start_at: float, out: Any) -> None:
    # Stock Optuna: its own RDBStorage, no heartbeat, no lock.
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=store.engine.engine_kwargs(url))
    study = optuna.load_study(study_name="bench", storage=rdb, sampler=optuna.samplers.RandomSampler())
    latencies = []
    while time.time() < start_at:
        time.sleep(0.01)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        trial = study.ask()
        study.tell(trial, _objective(trial))
        latencies.append(time.perf_counter() - began)
    out.put(latencies)


def _morsearch_loop(url: str, seconds: float, start_at: float, out: Any) -> None:
    rdb, engine = open_storage(url)
    study = load_study(rdb, "bench", optuna.samplers.RandomSampler())
    stop = GracefulStop()
    marks: list[float] = []

    def objective(trial: optuna.Trial) -> Outcome:
        marks.append(time.perf_counter())  # one mark per trial: the gaps are whole trial cycles
        values = _objective(trial)
        record = store.TrialRecord(
            study_name="bench", trial_number=trial.number, state="complete", config_hash="h", model_config={}
        )
        return Outcome(optuna.trial.TrialState.COMPLETE, values, record)

    while time.time() < start_at:
        time.sleep(0.01)
    threading.Timer(seconds, stop.event.set).start()
    Worker(study, rdb, engine, objective, n_trials=10**9, stop=stop, poll_seconds=0.05).run()
    out.put(list(np.diff(marks)))


def _fresh_url(backend: str, folder: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}", None
    schema = f"msbench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def _drop(schema: str | None) -> None:
    if schema is None:
        return
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def run_one(backend: str, loop: str, workers: int, seconds: float, folder: Path) -> dict[str, Any]:
    """One measurement: ``workers`` processes running ``loop`` against a fresh study for ``seconds``."""
    url, schema = _fresh_url(backend, folder)
    try:
        rdb, engine = open_storage(url)
        create_study(rdb, engine, "bench", ("minimize", "minimize"), ("a", "b"))
        rdb.engine.dispose()
        store.dispose_engines()
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        target_fn = _optuna_loop if loop == "optuna" else _morsearch_loop
        start_at = time.time() + 1.0 + 0.05 * workers  # every process connected before the clock starts
        procs = [ctx.Process(target=target_fn, args=(url, seconds, start_at, out)) for _ in range(workers)]
        for p in procs:
            p.start()
        latencies = [x for _ in procs for x in out.get(timeout=seconds + 600)]
        for p in procs:
            p.join(timeout=60)
        rdb, _ = open_storage(url)
        finished = optuna.load_study(study_name="bench", storage=rdb).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        rdb.engine.dispose()
        lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
        return {
            "backend": backend,
            "loop": loop,
            "workers": workers,
            "seconds": seconds,
            "trials": len(finished),
            "trials_per_s": len(finished) / seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "error": None,
        }
    except Exception as exc:  # a backend that cannot take this many workers is a result too
        return {"backend": backend, "loop": loop, "workers": workers, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        store.dispose_engines()
        _drop(schema)


def _pg_available() -> bool:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sa.exc.OperationalError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 8 workers, 2 s each (CPU, seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="Measured seconds per run.")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="Worker counts (default 1 8 32 64).")
    parser.add_argument("--out", type=Path, default=None, help="Result JSON (default benchmarks/results/).")
    args = parser.parse_args()
    counts = args.workers or ([1, 8] if args.quick else [1, 8, 32, 64])
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    backends = ["sqlite"] + (["postgresql"] if _pg_available() else [])
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            for loop in ("optuna", "morsearch"):
                for workers in counts:
                    # Long enough that even the slowest of many workers finishes several cycles.
                    result = run_one(backend, loop, workers, max(seconds, workers / 2), Path(folder))
                    runs.append(result)
                    shown = (
                        f"{result['trials_per_s']:7.1f} trials/s  p50 {result['p50_ms']:7.1f} ms  "
                        f"p99 {result['p99_ms']:8.1f} ms"
                        if result["error"] is None
                        else result["error"]
                    )
                    print(f"{backend:10s} {loop:9s} {workers:3d} workers  {shown}", flush=True)
    targets = []
    for backend in backends:
        ok = [r for r in runs if r["backend"] == backend and r["loop"] == "morsearch" and r["error"] is None]
        if not ok:
            continue
        best = max(r["trials_per_s"] for r in ok)
        # Workers the store can feed with 30 s trials: each needs 1/30 trial per second.
        ceiling = int(best * REAL_TRIAL_SECONDS)
        targets.append(target(f"{backend}: workers served at {REAL_TRIAL_SECONDS:.0f} s per trial", ceiling, 64))
        eight = [r for r in ok if r["workers"] == 8]
        if eight:  # eight local workers: the usual one-machine search
            targets.append(target(f"{backend}: p99 trial cycle at 8 workers (ms)", eight[0]["p99_ms"], 2000.0, False))
    raw = {
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "real_trial_seconds": REAL_TRIAL_SECONDS,
        "quick": args.quick,
    }
    path = write_result("storage_scaling" + ("_quick" if args.quick else ""), raw, targets, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
