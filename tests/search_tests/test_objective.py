"""The search objective on real tiny proxies: train, measure, record, reuse, pre-filter, failures."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from morsearch import store
from morsearch.search.distributions import baseline_specs, enqueue_baselines, suggest
from morsearch.search.objective import SearchObjective
from morsearch.search.samplers import make_sampler
from morsearch.search.space import load_search_space
from morsearch.search.study import create_study, open_storage
from morsearch.search.worker import PREFILTERED_ATTR, TrialInterrupted, Worker

QUICKSTART = Path(__file__).parents[2] / "search_spaces" / "quickstart.yaml"
TINY_BUDGET = {"kind": "flops", "value": 8e7, "batch_size": 2, "seq_len": 32}


def tiny_space_file(folder: Path, **changes) -> Path:
    """The quickstart space shrunk to seconds per trial on a CPU (same keys, smaller numbers)."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["study_name"] = "tiny"
    data["n_trials"] = 3
    data["model"].update(
        {"max_seq_len": 32, "params_unique": {"low": "15k", "high": "30k", "log": True}, "head_dim": 8}
    )
    data["model"]["num_layers"] = [2, 4]
    data["budget"].update(TINY_BUDGET)
    data["data"]["builtin_tokens"] = 20000
    data["target"].update({"repeats": 1, "warmup": 0, "new_tokens": 4, "prompt_len": 8})
    data["reference_point"] = {"val_nll": 5.6, "peak_memory": "64MiB", "decode_tokens_per_s": 1}
    data["constraints"] = ["params_unique <= 30k"]
    data.update(changes)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny(tmp_path: Path):
    space = load_search_space(tiny_space_file(tmp_path))
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    rdb, engine = open_storage(url)
    study, _ = create_study(rdb, engine, "tiny", space.directions, space.objective_names, make_sampler(space))
    yield space, study, rdb, engine
    rdb.engine.dispose()
    store.dispose_engines()


def test_a_trial_trains_measures_and_records(tiny) -> None:
    space, study, rdb, engine = tiny
    enqueue_baselines(study, space)
    Worker(study, rdb, engine, SearchObjective(space, study, engine), 1).run()
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure_detail")
    assert trial.user_attrs["baseline"] == "vanilla"
    record = store.read_trial(engine, "tiny", 0)
    assert record.state == "complete" and record.trial_number == 0
    # Values are the space's objectives, read from the record's metrics in the same order.
    assert list(trial.values) == [record.objectives[name] for name in space.objective_names]
    assert record.val_nll == record.curve[-1][1] and len(record.curve) >= 2
    assert record.measurement["peak_memory_bytes"] == record.objectives["peak_memory"]
    assert record.routing and set(record.phase_seconds) >= {"train", "validate", "trial"}
    assert record.hardware["cpu_threads"] >= 1 and record.versions["optuna"] == optuna.__version__
    assert record.model_config == trial.user_attrs["model_config"]
    # The cap became an Optuna constraint (feasible here: <= 0).
    assert trial.system_attrs["constraints:params_unique <= 30k"] <= 0


def test_identical_config_is_reused_not_trained(tiny) -> None:
    space, study, rdb, engine = tiny
    vanilla = baseline_specs(space)[0]
    spec = suggest(optuna.trial.FixedTrial(vanilla.params), space)
    metrics = {"val_nll": 2.5, "peak_memory": 1e6, "decode_tokens_per_s": 50.0, "params_unique": 2e4}
    earlier = store.TrialRecord(
        study_name="an-earlier-study",
        trial_number=7,
        state="complete",
        config_hash=spec.fingerprint(),
        model_config=spec.model.model_dump(mode="json"),
        objectives=metrics,
        curve=((64, 3.0), (128, 2.5)),
    )
    store.write_trial(engine, earlier)

    def refuse(*_args, **_kwargs):
        raise AssertionError("trained an identical configuration again")

    study.enqueue_trial(vanilla.params)  # as a sampler could propose it
    Worker(study, rdb, engine, SearchObjective(space, study, engine, train=refuse, measure=refuse), 1).run()
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE and trial.values == [2.5, 1e6, 50.0]
    assert trial.user_attrs["reused_from"] == "an-earlier-study#7" and trial.user_attrs["gpu_seconds"] == 0.0
    record = store.read_trial(engine, "tiny", 0)
    assert record.reused_from == "an-earlier-study#7" and record.curve == earlier.curve
    # A reused result is never itself the source of a later reuse.
    assert store.find_completed(engine, spec.fingerprint()).study_name == "an-earlier-study"


def test_config_breaking_a_cap_is_rejected_before_training(tmp_path: Path) -> None:
    space = load_search_space(tiny_space_file(tmp_path, constraints=["params_unique <= 20k"]))
    url = f"sqlite:///{tmp_path / 'cap.db'}"
    rdb, engine = open_storage(url)
    study, _ = create_study(rdb, engine, "tiny", space.directions, space.objective_names, make_sampler(space))

    def refuse(*_args, **_kwargs):
        raise AssertionError("trained a configuration that breaks a cap")

    objective = SearchObjective(space, study, engine, train=refuse, measure=refuse)
    study.enqueue_trial({"params_unique": 29_000})
    trial = study.ask()
    outcome = objective(trial)
    assert outcome.state == TrialState.PRUNED and outcome.attrs[PREFILTERED_ATTR]
    assert "params_unique <= 20k" in outcome.record.failure_detail
    # The constraint value is the analytic excess, so TPE ranks the trial among its infeasible ones.
    constraints = study._storage.get_trial(trial._trial_id).constraints
    assert constraints == {"params_unique <= 20k": pytest.approx(9_000, rel=0.05)}
    assert outcome.record.failure_reason == "infeasible"
    rdb.engine.dispose()
    store.dispose_engines()


def test_out_of_memory_is_recorded_with_the_memory_asked_for(tiny) -> None:
    space, study, rdb, engine = tiny

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB (GPU 0; 79.10 GiB total)")

    objective = SearchObjective(space, study, engine, train=out_of_memory)
    summary = Worker(study, rdb, engine, objective, 2).run()
    assert summary.failed == 2  # the worker went on after the first
    record = store.read_trial(engine, "tiny", 0)
    assert record.failure_reason == "oom" and record.requested_memory_bytes == int(3.5 * 2**30)
    assert study.trials[0].user_attrs["failure_reason"] == "oom"


def test_stop_request_ends_training_at_the_next_evaluation(tiny) -> None:
    space, study, rdb, engine = tiny
    objective = SearchObjective(space, study, engine)
    objective.stop.event.set()
    with pytest.raises(TrialInterrupted):
        objective(study.ask())
