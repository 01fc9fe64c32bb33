"""Can the proxy's ranking be trusted? Rank configurations at the proxy budget and at 10x it.

    python -m benchmarks.proxy_fidelity            # GPU: writes benchmarks/results/proxy_fidelity.json
    python -m benchmarks.proxy_fidelity --quick    # CPU smoke run: 5 tiny configs (not written)
    python -m benchmarks.proxy_fidelity --proxy-flops 3e13 --multipliers 1 2   # another P, proxies at P and 2P

Fourteen configurations across the paper's design space (vanilla, recursive with each
sharing strategy, expert-choice with Nr 2/3/4, capacity schedules and KV sharing,
token-choice with both balancing rules, two widths) are trained on the same data
(builtin corpus, same split) with the same seed at the proxy budget P (training FLOPs,
the search's unit) and at 10 P. Kendall's tau and Spearman's rho compare the two
rankings of validation NLL. Target: tau >= 0.8. ``--multipliers`` (default 1 3) trains
proxies at m x P and scores each against the same 10 P reference, to find the smallest
budget whose ranking holds. A CPU run of the 14 structures at tiny widths (--quick
--all-configs --proxy-flops 1e10) gave tau 0.17 at P (40 steps) and 0.65 at 3 P against
10 P: proxies of a few dozen steps rank by early learning speed, not by final quality.
On an H200, ``--proxy-flops 1e13 --multipliers 1 3 --seeds 2 --jobs 14`` (the committed
result: 1e13, 3e13 and 1e14 FLOPs, two seeds, 229 s) gave tau 0.52 (1e13 vs 1e14) and 0.67
(3e13 vs 1e14), with seed-to-seed agreement 0.71, 0.71 and 0.87 at the three budgets: below
1e14 no proxy can reach 0.8, since it does not even agree with itself (docs/DATA.md).

``--configs space`` replaces the 14 curated configurations, which share one width,
with 14 drawn at random from ``search_spaces/paper.yaml`` by the search's own sampling
(4M-40M unique parameters, 14-28 layers): the spread of sizes and designs a search
ranks, where most of the curated set lies within one reference's noise at 1e15.
On an H200 (2026-12-04, ``--configs space --proxy-flops 1e14 --multipliers 1 --seeds 2
--reference-batch-size 128 --jobs 7``, two calls of about 300 s, the second with
``--resume``) it gave tau 0.912 (rho 0.978), the target met, with the reference seeds
agreeing at 0.912 (``benchmarks/results/proxy_fidelity_space.json``).

``--seeds 2`` trains every run again with another training seed and reports tau between
the two seeds at each budget (``seed_agreement``): the ceiling that any proxy's tau meets,
since two equally good measurements of one ranking disagree that much.

Trials are small, so several share the GPU at once (``--jobs``, separate processes). The
result file is rewritten after every run, so a run cut short keeps what it trained, and
``--resume`` (same arguments) trains only what is missing: a ladder that takes longer
than one device call runs in several, as long as each run fits one call (a run cut
short is lost). ``--batch-size`` sets the step of every run, ``--reference-batch-size``
that of the references alone; each run records its own, and ``--resume`` reuses a run
only at the same budget, seed and step. It also keeps what the earlier file's ``raw``
held that the benchmark does not write (a note, kept repeats), listed in
``carried_from_earlier_file``. At batch 32 the 14 references of 1e15 FLOPs
need about 15 minutes side by side (17 TFLOP/s in all on an H200), so the 1e14 against
1e15 rung (``benchmarks/results/proxy_fidelity_1e14.json``) reused the 1e14 proxies of
the result above and trained the references at batch 128:

    cp benchmarks/results/proxy_fidelity.json OUT.json
    python -m benchmarks.proxy_fidelity --proxy-flops 1e14 --multipliers 1 --seeds 2 \
        --reference-batch-size 128 --jobs 7 --resume --out OUT.json

It gave tau 0.58 on all 14, but the two reference seeds agree only at 0.47: at 1e15 most
of these models lie closer together than one reference's own noise (docs/DATA.md). With
several seeds, ``seed_mean_agreement`` also ranks each config by its mean over the first
``seeds`` seeds, as many as more than two configs have at both budgets, so a resumed run
cut short in a new seed keeps the means of the seeds before it (0.49 there, 14 configs,
two seeds).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import statistics
import time
from pathlib import Path
from typing import Any

from scipy import stats

from benchmarks.common import RESULTS, die_with_parent, target, write_result

SHAPE = dict(vocab_size=256, d_model=192, num_heads=6, num_kv_heads=2, ffn_dim=512, max_seq_len=256)
QUICK_SHAPE = dict(vocab_size=128, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64, max_seq_len=64)
EC, TC, MC = "expert_choice", "token_choice", "middle_cycle"
# name -> ModelConfig fields on top of the shape
CONFIGS: dict[str, dict[str, Any]] = {
    "vanilla-L6": dict(num_layers=6),
    "vanilla-L8-d128": dict(num_layers=8, d_model=128, num_heads=4, ffn_dim=344),
    "recursive-cycle-nr2": dict(num_layers=6, num_recursions=2, sharing="cycle"),
    "recursive-mcycle-nr3": dict(num_layers=8, num_recursions=3, sharing=MC),
    "recursive-sequence-nr2": dict(num_layers=6, num_recursions=2, sharing="sequence"),
    "recursive-msequence-nr3": dict(num_layers=8, num_recursions=3, sharing="middle_sequence"),
    "mor-ec-mcycle-nr2": dict(num_layers=8, num_recursions=2, sharing=MC, router=EC),
    "mor-ec-mcycle-nr3": dict(num_layers=8, num_recursions=3, sharing=MC, router=EC),
    "mor-ec-mcycle-nr4": dict(num_layers=10, num_recursions=4, sharing=MC, router=EC),
    "mor-ec-cycle-nr3-geometric": dict(
        num_layers=6, num_recursions=3, sharing="cycle", router=EC, capacity_schedule="geometric"
    ),  # fmt: skip
    "mor-ec-mcycle-nr3-kvshare": dict(
        num_layers=8, num_recursions=3, sharing=MC, router=EC, kv_strategy="recursive_sharing"
    ),  # fmt: skip
    "mor-tc-mcycle-nr3": dict(num_layers=8, num_recursions=3, sharing=MC, router=TC),
    "mor-tc-mcycle-nr3-lossfree": dict(num_layers=8, num_recursions=3, sharing=MC, router=TC, balancing="loss_free"),
    "mor-ec-mcycle-nr2-d256": dict(
        num_layers=8, num_recursions=2, sharing=MC, router=EC, d_model=256, num_heads=8, ffn_dim=688
    ),  # fmt: skip
}
QUICK_CONFIGS = ["vanilla-L6", "recursive-mcycle-nr3", "mor-ec-mcycle-nr3", "mor-tc-mcycle-nr3", "mor-ec-mcycle-nr2"]


def budget_fields(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(kind="flops", value=3e9, batch_size=8, seq_len=64)
    return dict(kind="flops", value=1e13, batch_size=32, seq_len=256)


def model_fields(name: str, quick: bool) -> dict[str, Any]:
    fields = {**SHAPE, **CONFIGS[name]}
    if quick:  # keep the structure and the width order, shrink the widths
        d_model = {128: 24, 192: 32, 256: 48}[fields["d_model"]]
        fields |= {**QUICK_SHAPE, "d_model": d_model, "ffn_dim": 2 * d_model}
    return fields


def paper_space_configs(count: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``count`` distinct model configurations drawn at random from ``search_spaces/paper.yaml``.

    The draw is the search's own (``suggest`` under Optuna's RandomSampler), caps
    included, so it spans the space's sizes (4M-40M unique parameters) as well as its
    design choices: the spread a search ranks, where the curated set holds one width.
    """
    import optuna

    from morsearch.errors import ConfigError
    from morsearch.search.distributions import suggest, violates_caps
    from morsearch.search.space import load_search_space

    space = load_search_space(Path(__file__).parents[1] / "search_spaces" / "paper.yaml")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a scratch study
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    configs: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    while len(configs) < count:
        trial = study.ask()
        try:
            spec = suggest(trial, space)
        except ConfigError:
            spec = None
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # only the draws matter, not the study
        if spec is None or violates_caps(spec, space) or spec.fingerprint() in seen:
            continue
        seen.add(spec.fingerprint())
        model = spec.model
        if model.num_recursions == 1:
            kind = "vanilla"
        else:
            family = {"none": "recursive", "expert_choice": "mor-ec", "token_choice": "mor-tc"}[model.router]
            kind = f"{family}-{model.sharing}-nr{model.num_recursions}"
            kind += "-kvshare" if model.kv_strategy == "recursive_sharing" else ""
        name = f"{len(configs):02d}-{kind}-L{model.num_layers}-{model.unique_parameters() / 1e6:.1f}M"
        configs[name] = model.model_dump(mode="json")
    return configs


def train_one(job: tuple[str, dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    """One run in a worker process: returns the numbers the table needs."""
    import torch

    from morsearch.config import DataConfig, ModelConfig, TrainBudget
    from morsearch.errors import MorsearchError
    from morsearch.train import run_proxy

    name, model, budget, builtin_tokens = job
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # parallel CPU jobs: one thread each
    cfg = ModelConfig(**model)
    start = time.perf_counter()
    try:
        result = run_proxy(cfg, TrainBudget(**budget), DataConfig(builtin_tokens=builtin_tokens))
    except MorsearchError as error:
        return {**run_key(name, budget), "error": str(error)}
    return {
        **run_key(name, budget),
        "val_nll": result.val_nll,
        "tokens": result.tokens_seen,
        "params": cfg.unique_parameters(),
        "seconds": time.perf_counter() - start,
    }


RUN_KEY = ("name", "flops", "seed", "batch_size")


def run_key(name: str, budget: dict[str, Any]) -> dict[str, Any]:
    """What tells one run of the plan from another (``RUN_KEY``): config, budget, seed and step size."""
    return dict(zip(RUN_KEY, (name, budget["value"], budget["seed"], budget["batch_size"]), strict=True))


def key_of(run: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(run[k] for k in RUN_KEY)


def rank_agreement(proxy: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    names = sorted(set(proxy) & set(reference))
    a, b = [proxy[n] for n in names], [reference[n] for n in names]
    return {
        "kendall_tau": float(stats.kendalltau(a, b).statistic),
        "spearman_rho": float(stats.spearmanr(a, b).statistic),
    }


def summarise(
    runs: list[dict[str, Any]], configs: dict[str, dict[str, Any]], budgets: dict[str, float], factor: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The agreement of the rankings (seed 0) and, with several seeds, the noise ceiling; the targets.

    ``configs``: each planned configuration's model fields, by name.
    """
    flops = sorted(set(budgets.values()))
    base = budgets["proxy_x1"]

    def nll_at(value: float, seed: int = 0) -> dict[str, float]:
        return {r["name"]: r["val_nll"] for r in runs if r["flops"] == value and r["seed"] == seed and "val_nll" in r}

    nll = {label: nll_at(v) for label, v in budgets.items()}
    agreement = {
        label: rank_agreement(nll[label], nll["reference"])
        for label in budgets
        if label != "reference" and len(set(nll[label]) & set(nll["reference"])) > 2
    }
    reference_rank = {n: i + 1 for i, n in enumerate(sorted(nll["reference"], key=nll["reference"].get))}
    proxy_rank = {n: i + 1 for i, n in enumerate(sorted(nll["proxy_x1"], key=nll["proxy_x1"].get))}
    table = [
        {
            "name": n,
            "params": next(r["params"] for r in runs if r["name"] == n and "params" in r),
            "proxy_nll": nll["proxy_x1"].get(n),
            "reference_nll": nll["reference"][n],
            "proxy_rank": proxy_rank.get(n),
            "reference_rank": reference_rank[n],
            "config": fields,
        }
        for n, fields in configs.items()
        if n in nll["reference"]
    ]
    # every budget against every larger one: where along the ladder does a ranking start to hold?
    pairwise = [
        {"proxy_flops": a, "reference_flops": b, **rank_agreement(nll_at(a), nll_at(b))}
        for i, a in enumerate(flops)
        for b in flops[i + 1 :]
        if len(set(nll_at(a)) & set(nll_at(b))) > 2
    ]
    # the same budget, another training seed: how far two equally good proxies disagree
    seeds = sorted({r["seed"] for r in runs} - {0})
    noise = [
        {"flops": v, "seed": seed, **rank_agreement(nll_at(v, seed), nll_at(v))}
        for v in flops
        for seed in seeds
        if len(set(nll_at(v, seed)) & set(nll_at(v))) > 2
    ]
    # each config's mean over the seeds, where every seed ran at both budgets: the ranking
    # with the least noise on either side (a noisy reference caps tau as a noisy proxy does)
    all_seeds = [0, *seeds]

    def mean_nll_at(value: float, count: int) -> dict[str, float]:
        per_seed = [nll_at(value, seed) for seed in all_seeds[:count]]
        complete = set.intersection(*(set(nlls) for nlls in per_seed))
        return {n: statistics.fmean(nlls[n] for nlls in per_seed) for n in complete}

    seed_means = {}
    for label, value in budgets.items():
        if label == "reference":
            continue
        for count in range(len(all_seeds), 1, -1):  # the most seeds that more than two configs have
            proxy_means, reference_means = mean_nll_at(value, count), mean_nll_at(budgets["reference"], count)
            common = set(proxy_means) & set(reference_means)
            if len(common) > 2:
                agreement_of_means = rank_agreement(proxy_means, reference_means)
                seed_means[label] = {"seeds": count, "configs": len(common), **agreement_of_means}
                break
    raw = {
        "agreement": agreement,
        "seed_mean_agreement": seed_means,
        "table": table,
        "pairwise": pairwise,
        "seed_agreement": noise,
    }
    targets = []
    if "proxy_x1" in agreement:
        targets.append(target("kendall_tau_proxy_vs_10x", agreement["proxy_x1"]["kendall_tau"], 0.8))
    targets += [
        target(f"kendall_tau_{label}_vs_reference", values["kendall_tau"], 0.8)
        for label, values in agreement.items()
        if label != "proxy_x1"
    ]
    targets += [
        target(f"kendall_tau_{pair['proxy_flops']:.0e}_vs_{pair['reference_flops']:.0e}", pair["kendall_tau"], 0.8)
        for pair in pairwise
        if pair["proxy_flops"] != base and math.isclose(pair["reference_flops"], factor * pair["proxy_flops"])
    ]
    return raw, targets


def earlier_raw(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The ``raw`` of an earlier result file, if it used the same data and training settings."""
    earlier = json.loads(path.read_text())["raw"]
    per_run = {"value", "batch_size"}
    settings = {k: v for k, v in header["budget"].items() if k not in per_run}
    same_settings = {k: v for k, v in earlier["budget"].items() if k not in per_run} == settings
    if not same_settings or earlier["data"] != header["data"]:
        raise SystemExit(f"{path}: its runs used other training or data settings; --resume needs the same ones")
    if earlier.get("configs", "curated") != header["configs"]:  # files from before --configs are curated
        raise SystemExit(
            f"{path}: its configurations are --configs {earlier.get('configs', 'curated')}; resume with that"
        )
    return earlier


def finished_runs(earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained runs of an earlier ``raw``.

    Budget and step size are a run's own (``run_key``); a run from before step sizes
    were recorded took its file's ``batch_size``.
    """
    default_batch = earlier["budget"]["batch_size"]
    return [{"batch_size": default_batch, **run} for run in earlier["runs"] if "val_nll" in run]


def with_carried(raw: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus what the earlier file held that this run does not write (notes, kept repeats), named as such."""
    carried = {k: v for k, v in earlier.items() if k not in raw and k != "carried_from_earlier_file"}
    if not carried:
        return raw
    return {**raw, **carried, "carried_from_earlier_file": sorted(carried)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; result not written")
    parser.add_argument("--all-configs", action="store_true", help="with --quick: all 14 configs, tiny widths")
    parser.add_argument(
        "--configs",
        choices=("curated", "space"),
        default="curated",
        help="the 14 hand-picked configs of one width, or 14 drawn from search_spaces/paper.yaml (its sizes too)",
    )
    parser.add_argument("--proxy-flops", type=float, default=None, help="proxy budget P (training FLOPs)")
    parser.add_argument("--factor", type=float, default=10.0, help="reference budget = factor x P")
    parser.add_argument(
        "--multipliers", type=float, nargs="*", default=None, help="proxies at m x P (default 1 3; --quick: 1)"
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="training seeds per run; more give the seed-to-seed ceiling of tau"
    )
    parser.add_argument("--out", type=Path, default=None, help="result file (default: results/; --quick: none)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: 4 on GPU, 2 on CPU)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the result file's runs of this plan and train only the rest"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="sequences per step (default 32; --quick: 8), recorded"
    )
    parser.add_argument(
        "--reference-batch-size",
        type=int,
        default=None,
        help="sequences per step of the reference runs (default: --batch-size), recorded",
    )
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: give at least 1")
    for flag, value in (("--batch-size", args.batch_size), ("--reference-batch-size", args.reference_batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: give at least 1")
    if args.quick and args.configs == "space":
        parser.error("--configs space: the paper space's models are GPU-sized; drop --quick")
    if args.quick:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    cuda = torch.cuda.is_available()
    jobs = args.jobs or (4 if cuda else 2)
    base = budget_fields(args.quick)
    if args.proxy_flops:
        base["value"] = args.proxy_flops
    if args.batch_size:
        base["batch_size"] = args.batch_size
    if args.configs == "space":
        configs = paper_space_configs(len(CONFIGS))
    else:
        names = QUICK_CONFIGS if args.quick and not args.all_configs else list(CONFIGS)
        configs = {name: model_fields(name, args.quick) for name in names}
    multipliers = sorted({1.0, *(args.multipliers or ([] if args.quick else [3.0]))})
    budgets = {"reference": base["value"] * args.factor} | {f"proxy_x{m:g}": base["value"] * m for m in multipliers}
    flops = sorted(set(budgets.values()))
    # enough generated text that even the reference run sees each token only a few times
    builtin_tokens = 200_000 if args.quick else 20_000_000
    reference_batch = args.reference_batch_size or base["batch_size"]

    def batch_at(value: float) -> int:
        return reference_batch if value == budgets["reference"] else base["batch_size"]

    work = [
        (
            name,
            fields,
            {**base, "value": value, "seed": seed, "batch_size": batch_at(value)},
            builtin_tokens,
        )
        for value in reversed(flops)  # longest first: better packing
        for seed in range(args.seeds)
        for name, fields in configs.items()
    ]
    header = {
        "proxy_flops": base["value"],
        "reference_flops": budgets["reference"],
        "reference_batch_size": reference_batch,
        "budget": base,
        "data": {"source": "builtin", "builtin_tokens": builtin_tokens},
        "jobs": jobs,
        "seeds": args.seeds,
        "configs": args.configs,
    }
    out = args.out
    result_name = "proxy_fidelity" + ("_cpu" if args.quick else "") + ("_space" if args.configs == "space" else "")
    result_path = out or RESULTS / f"{result_name}.json"
    runs: list[dict[str, Any]] = []
    earlier: dict[str, Any] = {}
    if args.resume:  # a run cut short by a time limit goes on where it stopped
        if not result_path.exists():  # a mistyped path would silently train the whole plan again
            parser.error(f"--resume: {result_path} does not exist; copy the earlier result there or drop --resume")
        earlier = earlier_raw(result_path, header)
        planned = {key_of(run_key(job[0], job[2])) for job in work}
        runs = [r for r in finished_runs(earlier) if key_of(r) in planned]
        done = {key_of(r) for r in runs}
        work = [job for job in work if key_of(run_key(job[0], job[2])) not in done]
    print(f"{len(work)} runs, {jobs} at a time, P = {base['value']:.3g} FLOPs, reference {args.factor:g} P")
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=spawn, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        # as each run ends, not in submission order: a run that ends behind a longer one is kept
        for future in cf.as_completed([pool.submit(train_one, job) for job in work]):
            run = future.result()
            runs.append(run)
            shown = f"{run['val_nll']:.4f} nll, {run['tokens']:,} tokens" if "val_nll" in run else run["error"]
            print(f"  {run['name']:30s} {run['flops']:.3g} FLOPs seed {run['seed']}: {shown}")
            if not args.quick or out:  # after every run, so a run cut short keeps what it trained
                raw, targets = summarise(runs, configs, budgets, args.factor)
                raw = {**header, **raw, "runs": runs, "wall_seconds": time.perf_counter() - started}
                write_result(result_name, with_carried(raw, earlier), targets, out=out)

    raw, targets = summarise(runs, configs, budgets, args.factor)
    print(f"\n{'config':30s} {'params':>9s} {'proxy':>8s} {'10x':>8s} rank")
    for row in sorted(raw["table"], key=lambda r: r["reference_rank"]):
        print(
            f"{row['name']:30s} {row['params']:9,d} {row['proxy_nll'] or float('nan'):8.4f} "
            f"{row['reference_nll']:8.4f} {row['proxy_rank']} -> {row['reference_rank']}"
        )
    for label, values in raw["agreement"].items():
        print(f"{label:12s} kendall tau {values['kendall_tau']:.3f}  spearman rho {values['spearman_rho']:.3f}")
    for label, values in raw["seed_mean_agreement"].items():
        shown = f"kendall tau {values['kendall_tau']:.3f}  spearman rho {values['spearman_rho']:.3f}"
        print(f"{label:12s} means of {values['seeds']} seeds, {values['configs']} configs: {shown}")
    for pair in raw["pairwise"]:
        print(f"{pair['proxy_flops']:.0e} vs {pair['reference_flops']:.0e}: kendall tau {pair['kendall_tau']:.3f}")
    for pair in raw["seed_agreement"]:
        print(f"{pair['flops']:.0e}, seed {pair['seed']} vs seed 0: kendall tau {pair['kendall_tau']:.3f}")
    if args.quick and not out:
        print("quick run: result not written")
    else:
        print("wrote", result_path)


if __name__ == "__main__":
    main()
