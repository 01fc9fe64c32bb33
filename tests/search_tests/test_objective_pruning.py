"""Early stopping: successive halving on val NLL among peers of similar cost."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from morsearch.config.space import EarlyStoppingSettings
from morsearch.search.pruning import PEER_METRICS_ATTR, EarlyStopping, are_peers, should_stop

SETTINGS = EarlyStoppingSettings(rungs=(0.25, 0.5), keep_fraction=0.5, min_peers=3, peer_ratio=2.0)
COSTS = {"peak_memory": 1e6, "decode_tokens_per_s": 1e5}


def test_should_stop_keeps_the_best_fraction() -> None:
    peers = [2.0, 2.5, 3.0]
    assert not should_stop(1.9, peers, SETTINGS)  # best of 4
    assert not should_stop(2.2, peers, SETTINGS)  # 2nd of 4: inside the best half
    assert should_stop(2.7, peers, SETTINGS)  # 3rd of 4
    assert should_stop(float("nan"), peers, SETTINGS)
    assert not should_stop(9.0, peers[:2], SETTINGS)  # too few peers to judge


def test_peers_are_within_the_ratio_on_every_metric() -> None:
    assert are_peers(COSTS, {"peak_memory": 1.9e6, "decode_tokens_per_s": 0.6e5}, 2.0)
    assert not are_peers(COSTS, {"peak_memory": 2.1e6, "decode_tokens_per_s": 1e5}, 2.0)
    assert not are_peers(COSTS, {}, 2.0)


def _study_with(peers: list[tuple[dict, float, TrialState]]) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for costs, nll, state in peers:
        study.add_trial(
            optuna.create_trial(
                state=state,
                values=[nll, 1.0] if state == TrialState.COMPLETE else None,
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={PEER_METRICS_ATTR: costs, "rung:0.25": nll},
            )
        )
    return study


@pytest.mark.parametrize("protected", [False, True])
def test_callback_stops_a_trial_worse_than_its_peers(protected: bool) -> None:
    study = _study_with([(COSTS, v, TrialState.COMPLETE) for v in (2.0, 2.1, 2.2)])
    trial = study.ask()
    stopping = EarlyStopping(study, trial, SETTINGS, COSTS, total_tokens=1000, protected=protected)
    assert stopping(100, 3.0) is False  # before the first rung: nothing to compare
    assert stopping(300, 3.0) is (not protected)  # at 30 % (past the 25 % rung), last of 4
    assert study.trials[-1].user_attrs["rung:0.25"] == 3.0  # published for later trials either way


def test_cheaper_trials_and_failed_ones_are_not_peers() -> None:
    far = {"peak_memory": 1e7, "decode_tokens_per_s": 1e5}  # ten times the memory: not a peer
    study = _study_with(
        [(far, 1.0, TrialState.COMPLETE)] * 3 + [(COSTS, 1.0, TrialState.FAIL)] * 3 + [(COSTS, 1.0, TrialState.PRUNED)]
    )
    stopping = EarlyStopping(study, study.ask(), SETTINGS, COSTS, total_tokens=1000)
    assert stopping(300, 5.0) is False  # only one real peer
