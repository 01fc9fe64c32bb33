"""A real multi-objective Optuna study in a temp SQLite store, filled by an ask/tell loop
the way the search fills it (user attributes for config, curve, routing, phases)."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import pytest
import sqlalchemy

from morsearch import store

OBJECTIVES = ["val_nll", "peak_memory_mb", "decode_tokens_per_s"]
DIRECTIONS = ["minimize", "minimize", "maximize"]


QUICKSTART_ASSET = Path(__file__).parent / "assets" / "quickstart.db"


def copy_quickstart_store(dest: Path) -> Path:
    """A private copy of the committed store of a real quickstart search (skips the test without it)."""
    import sqlite3

    if not QUICKSTART_ASSET.exists():
        pytest.skip(f"{QUICKSTART_ASSET} missing; see tests/dashboard_tests/assets/README.md")
    # immutable: reading the committed asset must leave no -wal/-shm files beside it
    source, copy = sqlite3.connect(f"file:{QUICKSTART_ASSET}?immutable=1", uri=True), sqlite3.connect(dest)
    source.backup(copy)
    source.close()
    copy.close()
    return dest


def model_fields(router: str, num_recursions: int, d_model: int) -> dict:
    """Valid ModelConfig fields for one point of the little design space below."""
    fields = {"vocab_size": 256, "d_model": d_model, "num_heads": 4, "ffn_dim": 2 * d_model, "max_seq_len": 64}
    if num_recursions == 1:
        return {**fields, "num_layers": 4}
    return {
        **fields,
        "num_layers": 2 + 2 * num_recursions,
        "num_recursions": num_recursions,
        "sharing": "middle_cycle",
        "router": router,
    }


def fill_study(storage_url: str, study_name: str, num_trials: int = 24, seed: int = 0):
    """Ask/tell ``num_trials`` MoR-like trials plus two baselines, a failure and a running trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    storage = optuna.storages.RDBStorage(storage_url)
    if storage_url.startswith("sqlite"):
        # test data need no durability: skip the fsync of every commit (seconds on a slow disk)
        sqlalchemy.event.listen(storage.engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
        storage.engine.dispose()
    study = optuna.create_study(
        storage=storage, study_name=study_name, directions=DIRECTIONS, sampler=optuna.samplers.RandomSampler(seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVES)
    study.set_user_attr("reference_point", [6.0, 400.0, 0.0])

    engine = store.get_engine(storage_url)
    store.ensure_schema(engine)

    def tell(trial, router, nr, d_model, baseline=None):
        fields = model_fields(router, nr, d_model)
        nll = 4.0 - 0.004 * d_model - 0.15 * nr + (0.1 if router == "token_choice" else 0) + rng.uniform(0, 0.3)
        memory = d_model * 1.5 / nr + rng.uniform(0, 20)
        speed = 5000.0 / math.sqrt(d_model) * (1.3 if router == "expert_choice" else 1.0) + rng.uniform(0, 50)
        curve = [(k * 4096, nll + 1.5 / (k + 1)) for k in range(6)]
        routing = [1.0] + [round(1 - j / nr, 3) for j in range(1, nr)]
        phases = {"build": 0.2, "train": 3.0 + nr, "measure": 0.8}
        if baseline:
            trial.set_user_attr("baseline", baseline)
        trial.set_constraint("memory_cap", memory - 300.0)
        if trial.number % 2:  # odd trials: the facts as user attributes only
            trial.set_user_attr("model_config", fields)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("routing", routing)
            trial.set_user_attr("phase_seconds", phases)
        study.tell(trial, [nll, memory, speed])
        if trial.number % 2 == 0:  # even trials: the facts in the store's ms_ records only
            store.write_trial(
                engine,
                store.TrialRecord(
                    study_name=study_name,
                    trial_number=trial.number,
                    state="complete",
                    config_hash=store.config_hash(fields),
                    model_config=fields,
                    budget={"kind": "tokens", "value": 24576},
                    curve=tuple(curve),
                    routing=routing,
                    phase_seconds=phases,
                    device_seconds=4.0 + nr,
                    measurement={"peak_memory_bytes": int(memory * 2**20), "decode_tokens_per_s": speed},
                ),
            )

    routers = ["none", "expert_choice", "token_choice"]
    for nr, baseline in ((1, "vanilla"), (2, "recursive")):
        # the search enqueues its baselines as fixed points of the same space
        study.enqueue_trial({"router": "none", "num_recursions": nr, "d_model": 64})
        trial = study.ask()
        trial.suggest_categorical("router", routers)
        trial.suggest_int("num_recursions", 1, 3)
        trial.suggest_categorical("d_model", [32, 64, 128])
        tell(trial, "none", nr, 64, baseline)
    for _ in range(num_trials):
        trial = study.ask()
        router = trial.suggest_categorical("router", routers)
        nr = trial.suggest_int("num_recursions", 2, 3) if router != "none" else 1
        d_model = trial.suggest_categorical("d_model", [32, 64, 128])
        tell(trial, router, nr, d_model)
    failed = study.ask()
    failed.suggest_categorical("router", routers)
    failed.set_user_attr("failure_reason", "oom: CUDA out of memory (tried to allocate 2.00 GiB)")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.ask()  # left RUNNING, as a worker mid-trial leaves it
    store.dispose_engines()
    return study


@pytest.fixture(scope="session")
def study_store(tmp_path_factory) -> tuple[str, str]:
    """(storage URL, study name) of a filled study; read-only by the tests."""
    path = Path(tmp_path_factory.mktemp("store")) / "study.db"
    url = f"sqlite:///{path}"
    fill_study(url, "demo")
    return url, "demo"
