"""Hypervolume against trials and against device seconds: samplers, early stopping, pre-filtering.

Every run is a real search (proxy training + measurement) on one space, one worker,
a fresh store. The runs of one invocation, per space and seed:

    stock        Optuna 5 as it comes: TPESampler(), no early stopping, no pre-filtering,
                 no reuse, no baselines (what a user gets without morsearch)
    <sampler>    morsearch with that sampler (tpe, nsga2, gp, random): early stopping,
                 pre-filtering, reuse and baselines on
    <default>-no-es  the space's own sampler with early stopping off (what early stopping
                 saves, and whether the final front is worse)

For each run the hypervolume (the space's reference point, feasible completed
trials) is recorded after every trial, against the trial count and against the
device seconds spent so far (a reused or rejected trial costs none).

Target (issue 6): morsearch's default (the space's sampler with early stopping,
pre-filtering and reuse) reaches 90 % of the best final hypervolume in at most half
the device seconds stock Optuna needs. Each run is summarised over seeds by medians,
so "the best final hypervolume" is the best run's median final hypervolume (one
lucky seed of one run would set a level no median reaches), and the device seconds
to reach 90 % of it are the median over seeds. Where stock's median run never
reaches the level, stock needs more than its whole run, so the ratio reported is an
upper bound: the default's seconds over stock's total.

Run: ``python -m benchmarks.sampler_efficiency`` (quickstart space, 3 seeds; add
``--spaces quickstart paper`` on a GPU), or ``--quick`` (a shrunken quickstart, 1 seed,
stock vs tpe vs random: a few minutes on a CPU). The paper space as written (96
trials of 3e15 FLOPs) takes days per run; at ``--budget-flops 3e13 --jobs 8`` a search
does about 18 trials in 400 s on an H200 with 8 sharing the GPU, so the committed
``results/sampler_efficiency_paper.json`` (``--trials 64 --seeds 2 --samplers tpe
random``: 8 searches) ran in three device calls with ``--store-dir``. Searches sharing
the GPU count that sharing in their device seconds, alike for every run. Each
measurement holds the GPU alone (docs/SCALING.md) and the others' batches wait for it;
a trial's device seconds leave those waits out (in the committed run, 13.8 s of a
trial's 20.8 s median wall time). Each run also reports ``final_front``: its size and
the share of its hypervolume that its best single trial holds alone (on the paper
space 0.75-1.0: one trial's box is most of a front).
``--budget-flops`` also sizes a builtin corpus by the run (``load_space``): with the
paper space's fixed 50M-token corpus, validation outweighed training twentyfold and no
search of 16-20 trials finished within 225-570 s on an H200.
``--time-limit S`` stops every search after S seconds (its trial in flight is stopped)
and summarises the trials that finished, so a run fits the time it is given; give
``--jobs`` at least the number of searches, so that all start together and get the
same time. ``--store-dir DIR`` keeps the searches' stores: run again with the same
folder (and arguments) and every search continues where it stopped, toward ``--trials``,
its history and device seconds counted from all its trials, so a search longer than one
device call runs in several (carry the folder between them).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import math
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import torch
import yaml

from benchmarks.common import RESULTS, die_with_parent, target, write_result
from morsearch import store
from morsearch.config.space import SearchSpace
from morsearch.errors import MorsearchError
from morsearch.search.distributions import enqueue_baselines
from morsearch.search.launch import feasible, hypervolume, pareto_front, reference_point
from morsearch.search.objective import SearchObjective
from morsearch.search.samplers import SAMPLERS, make_sampler
from morsearch.search.space import load_search_space
from morsearch.search.study import create_study, open_storage
from morsearch.search.worker import GracefulStop, Worker

SPACES = Path(__file__).parents[1] / "search_spaces"


def quick_space_file(folder: Path, n_trials: int) -> Path:
    """The quickstart space shrunk to a few seconds per trial on a CPU."""
    data = yaml.safe_load((SPACES / "quickstart.yaml").read_text())
    data["n_trials"] = n_trials
    data["model"].update({"max_seq_len": 32, "params_unique": {"low": "15k", "high": "30k", "log": True}})
    data["model"]["head_dim"] = 8
    data["model"]["num_layers"] = [2, 4]
    data["budget"].update({"value": 1.5e8, "batch_size": 2, "seq_len": 32})
    data["data"]["builtin_tokens"] = 20000
    data["target"].update({"repeats": 1, "warmup": 0, "new_tokens": 4, "prompt_len": 8})
    data["reference_point"] = {"val_nll": 5.6, "peak_memory": "64MiB", "decode_tokens_per_s": 1}
    data["constraints"] = ["params_unique <= 25k"]
    data["early_stopping"]["min_peers"] = 2
    path = folder / "quick.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class SearchJob(NamedTuple):
    """One search of ``main``'s runs, as sent to a worker process."""

    path: Path
    budget_flops: float | None
    run: str
    seed: int
    folder: Path
    n_trials: int
    deadline: float | None  # time.time() at which the search stops (--time-limit)
    threads: int | None  # torch CPU threads of the process (None: torch's default)


def run_search(
    space: SearchSpace, run: str, seed: int, folder: Path, n_trials: int, deadline: float | None = None
) -> dict[str, Any]:
    """One search; returns its per-trial history. At ``deadline`` its trial in flight is stopped."""
    stock = run == "stock"
    no_es = run.endswith("-no-es")
    sampler_name = space.sampler.name if stock or no_es else run
    varied = space.replace(seed=seed, sampler={"name": sampler_name, "options": space.sampler.options})
    sampler = optuna.samplers.TPESampler(seed=seed) if stock else make_sampler(varied)
    url = f"sqlite:///{folder / f'{space.study_name}-{run}-{seed}.db'}"
    rdb, engine = open_storage(url)
    study, created = create_study(rdb, engine, space.study_name, space.directions, space.objective_names, sampler)
    if created and not stock:  # a search continued from --store-dir has its baselines already
        enqueue_baselines(study, varied)
    objective = SearchObjective(
        varied, study, engine, early_stopping=not (stock or no_es), reuse=not stock, prefilter=not stock
    )
    started = time.perf_counter()
    error = None
    stop = GracefulStop()
    timer = threading.Timer(max(0.0, deadline - time.time()), stop.event.set) if deadline else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        Worker(study, rdb, engine, objective, n_trials, stop=stop).run()
    except MorsearchError as exc:  # e.g. a sampler that keeps proposing configurations beyond the caps
        error = str(exc)
        print(f"{space.study_name:12s} seed {seed} {run:12s} stopped: {error}", flush=True)
    finally:
        if timer:
            timer.cancel()
    wall = time.perf_counter() - started
    history = []
    seconds = 0.0
    reference = reference_point(space)
    directions = space.directions
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]  # not queued or cut off
    trials = sorted(finished, key=lambda t: t.datetime_complete or t.datetime_start)
    front: list[optuna.trial.FrozenTrial] = []
    for i, trial in enumerate(trials):
        seconds += float(trial.user_attrs.get("gpu_seconds", 0.0))
        front = pareto_front(trials[: i + 1], directions)
        history.append(
            {
                "trial": i + 1,
                "device_seconds": seconds,
                "hypervolume": hypervolume([t.values for t in front], directions, reference) if reference else None,
                "state": trial.state.name,
                "feasible": feasible(trial),
                "reused": "reused_from" in trial.user_attrs,
                "rejected": bool(trial.user_attrs.get("prefiltered")),
                "values": list(trial.values) if trial.values else None,
            }
        )
    rdb.engine.dispose()
    store.dispose_engines()
    return {
        "run": run,
        "seed": seed,
        "wall_seconds": wall,
        "history": history,
        "final_front": front_shape(front, directions, reference),
        "error": error,
        "stopped_by_time_limit": stop.event.is_set(),
    }


def front_shape(
    front: list[optuna.trial.FrozenTrial], directions: list[str], reference: list[float] | None
) -> dict[str, Any]:
    """Size of a final front and the share of its hypervolume that its best single trial dominates alone.

    A share near 1 means the hypervolume is one trial's box: the run's figure then
    rests on whether it happened to find that one configuration (and on that trial's
    measurement), not on the shape of the whole front.
    """
    if not reference or not front:
        return {"size": len(front), "best_single_trial_share": None}
    total = hypervolume([t.values for t in front], directions, reference)
    best_single = max(hypervolume([t.values], directions, reference) for t in front)
    return {"size": len(front), "best_single_trial_share": best_single / total if total else None}


def run_search_job(job: SearchJob) -> dict[str, Any]:
    """``run_search`` in a worker process of ``--jobs`` (the space is loaded there)."""
    if job.threads:  # searches share the cores: one spinning thread pool per core each slows all
        torch.set_num_threads(job.threads)
    space = load_space(job.path, job.budget_flops)
    return run_search(space, job.run, job.seed, job.folder, job.n_trials, job.deadline)


def load_space(path: Path, budget_flops: float | None) -> SearchSpace:
    """The space, with ``budget_flops`` of training per trial if given.

    A smaller budget also sizes a builtin corpus by the run: a fixed corpus sized for
    the space's own budget holds out a validation set that can outweigh the shrunken
    training (the paper space's 2.5M validation tokens, validated at least twice,
    against 0.25M training tokens at 3e13 FLOPs).
    """
    space = load_search_space(path)
    if budget_flops is not None:
        data = space.data.replace(builtin_tokens=None) if space.data.source == "builtin" else space.data
        space = space.replace(budget=space.budget.replace(value=budget_flops), data=data)
    return space


def seconds_to_reach(history: list[dict[str, Any]], level: float) -> float:
    """Device seconds at which the hypervolume first reaches ``level`` (inf if never)."""
    for point in history:
        if point["hypervolume"] is not None and point["hypervolume"] >= level:
            return point["device_seconds"]
    return math.inf


def summarise(space: SearchSpace, runs: list[str], results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict]:
    """Medians over seeds per run, and the target, from the searches finished so far."""
    summary = {}
    for run in runs:
        mine = [r for r in results if r["run"] == run and r["history"]]
        if mine:
            summary[run] = {
                "seeds_done": len(mine),
                "final_hypervolume_median": float(np.median([r["history"][-1]["hypervolume"] or 0 for r in mine])),
                "device_seconds_median": float(np.median([r["history"][-1]["device_seconds"] for r in mine])),
                "best_single_trial_share": [(r.get("final_front") or {}).get("best_single_trial_share") for r in mine],
            }
    best = max((numbers["final_hypervolume_median"] for numbers in summary.values()), default=0.0)
    for run, numbers in summary.items():
        mine = [r for r in results if r["run"] == run and r["history"]]
        reach = [seconds_to_reach(r["history"], 0.9 * best) for r in mine]
        numbers["seconds_to_90pct_median"] = float(np.median(reach))
    found: dict[str, Any] = {"best_median_final_hypervolume": best, "summary": summary, "runs": results}
    name = f"{space.study_name}: morsearch default / stock Optuna device seconds to 90 % of best median HV"
    if space.sampler.name not in summary or "stock" not in summary:
        return found, target(name + " (not both run yet)", math.nan, 0.5, higher_is_better=False)
    default, stock = summary[space.sampler.name], summary["stock"]
    default_seconds, stock_seconds = default["seconds_to_90pct_median"], stock["seconds_to_90pct_median"]
    if not math.isfinite(default_seconds):  # no ratio to bound: the default missed the level itself
        found["ratio_is_upper_bound"] = False
        return found, target(name + " (the default's median run never reached it)", math.inf, 0.5, False)
    stock_reached = math.isfinite(stock_seconds)
    if not stock_reached:  # stock needs more than its whole run: an upper bound on the ratio
        stock_seconds = stock["device_seconds_median"]
    found["ratio_is_upper_bound"] = not stock_reached
    ratio = default_seconds / stock_seconds
    return found, target(name + ("" if stock_reached else " (stock never reached it: at most)"), ratio, 0.5, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Shrunken quickstart, 1 seed, stock/tpe/random (CPU).")
    parser.add_argument("--spaces", nargs="*", default=None, help="Spaces in search_spaces/ (default quickstart).")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per run (default 3).")
    parser.add_argument("--trials", type=int, default=None, help="Trials per run (default: the space's n_trials).")
    parser.add_argument("--samplers", nargs="*", default=None, help=f"morsearch samplers (default {list(SAMPLERS)}).")
    parser.add_argument("--out", type=Path, default=None, help="Result JSON (default benchmarks/results/).")
    parser.add_argument(
        "--budget-flops", type=float, default=None, help="Training FLOPs per trial instead of the space's (recorded)."
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="Searches at once, in separate processes (they share the device)."
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, help="Stop every search after this many seconds (per space)."
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="Keep each search's SQLite store here; a later run with the same folder continues them to --trials.",
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1")
    if args.store_dir is not None and args.store_dir.exists() and not args.store_dir.is_dir():
        parser.error(f"--store-dir {args.store_dir}: a file is there; give a folder (new or of an earlier run)")
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error(f"--time-limit {args.time_limit:g}: give a positive number of seconds")
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    samplers = args.samplers or (["tpe", "random"] if args.quick else list(SAMPLERS))
    raw: dict[str, Any] = {
        "spaces": {},
        "seeds": seeds,
        "samplers": samplers,
        "budget_flops_override": args.budget_flops,
        "jobs": args.jobs,
        "time_limit_seconds": args.time_limit,
    }
    targets: dict[str, dict[str, Any]] = {}
    result_name = "sampler_efficiency" + ("_quick" if args.quick else "")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.store_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = (
            [quick_space_file(folder, args.trials or 6)]
            if args.quick
            else [SPACES / f"{name}.yaml" for name in (args.spaces or ["quickstart"])]
        )
        for path in paths:
            space = load_space(path, args.budget_flops)
            n_trials = args.trials or space.n_trials
            runs = ["stock", *samplers, f"{space.sampler.name}-no-es"]
            deadline = time.time() + args.time_limit if args.time_limit else None
            threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
            jobs = [
                SearchJob(path, args.budget_flops, run, seed, folder, n_trials, deadline, threads)
                for seed in seeds
                for run in runs
            ]
            results = []
            parallel = args.jobs > 1
            spawn = multiprocessing.get_context("spawn")
            pool_of_jobs = (
                cf.ProcessPoolExecutor(
                    args.jobs, mp_context=spawn, initializer=die_with_parent, initargs=(os.getpid(),)
                )
                if parallel
                else contextlib.nullcontext()
            )
            with pool_of_jobs as pool:
                if pool:  # taken as they finish, not in order, so each is written as soon as it is done
                    futures = [pool.submit(run_search_job, job) for job in jobs]
                    done = (future.result() for future in cf.as_completed(futures))
                else:
                    done = map(run_search_job, jobs)
                for result in done:
                    last = result["history"][-1] if result["history"] else {}
                    print(
                        f"{space.study_name:12s} seed {result['seed']} {result['run']:12s} "
                        f"HV {last.get('hypervolume') or 0:.4g} after {last.get('device_seconds', 0):.0f} device-s "
                        f"({result['wall_seconds']:.0f} s wall)",
                        flush=True,
                    )
                    results.append(result)
                    # after every search, so a run cut short keeps the searches it finished
                    raw["spaces"][space.study_name], targets[space.study_name] = summarise(space, runs, results)
                    write_result(result_name, raw, list(targets.values()), args.out)
            for run, numbers in raw["spaces"][space.study_name]["summary"].items():
                print(f"  {run:12s} {numbers}")
    print(f"wrote {args.out or RESULTS / (result_name + '.json')}")


if __name__ == "__main__":
    main()
