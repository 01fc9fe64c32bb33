"""Early stopping for a multi-objective study: successive halving among peers.

Optuna refuses ``trial.report``/``should_prune`` in multi-objective studies, so
morsearch decides itself, through ``run_proxy``'s ``on_eval`` callback. The rule
(docs/EARLY_STOPPING.md explains and measures it):

* At each rung (a share of the training budget, e.g. 25 % and 50 %) a trial
  publishes its validation NLL as the user attribute ``rung:<share>``.
* Its *peers* are the other trials, running or finished, that reached the same
  rung and whose cost metrics (``early_stopping.peer_metrics``, e.g. peak memory
  and decode speed) are within a factor ``peer_ratio`` of its own on every one.
* With at least ``min_peers`` peers, the trial stops when its NLL is not among the
  best ``keep_fraction`` of the group (itself included).

Memory and speed of a MoR model follow from its configuration, not its training,
so cost is fixed before training starts and quality is the only thing still
unknown: a trial that trains worse than most models of about its own cost cannot
end on the Pareto front, while a trial much cheaper than everyone has no peers
and is never stopped, which keeps the cheap end of the front intact. The cost
metrics are analytic stand-ins computed from the config (no device time):
weights + KV-cache bytes for memory, FLOPs per token for speed and latency.
Baselines are never stopped (every front keeps its references), but they serve
as peers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from morsearch.config.space import EarlyStoppingSettings
from morsearch.search.distributions import TrialSpec, analytic_lower_bounds

if TYPE_CHECKING:
    import optuna

PEER_METRICS_ATTR = "peer_metrics"
RUNG_ATTR = "rung:{:g}"


def peer_metric_values(spec: TrialSpec, names: Sequence[str]) -> dict[str, float]:
    """Analytic stand-ins of the cost metrics, comparable by ratio between configurations.

    Only ratios matter (peers are within ``peer_ratio`` of each other), so speed is
    represented by FLOPs per token, whatever the hardware.
    """
    from morsearch.model import sizing

    bounds = analytic_lower_bounds(spec)
    flops = sizing.forward_flops_per_token(spec.model, spec.target.total_len)
    stand_ins = {
        "peak_memory": bounds["peak_memory"][0],
        "kv_cache_bytes": max(bounds["kv_cache_bytes"][0], 1.0),
        "params_unique": bounds["params_unique"][0],
        "decode_tokens_per_s": flops,
        "prefill_tokens_per_s": flops,
        "latency_p90_ms": flops,
    }
    return {name: float(stand_ins[name]) for name in names if name in stand_ins}


def are_peers(a: Mapping[str, float], b: Mapping[str, float], ratio: float) -> bool:
    """Whether two trials are within ``ratio`` of each other on every shared cost metric."""
    shared = [k for k in a if k in b]
    return bool(shared) and all(max(a[k], b[k]) <= ratio * min(a[k], b[k]) for k in shared)


def should_stop(value: float, peer_values: Sequence[float], settings: EarlyStoppingSettings) -> bool:
    """Successive halving's verdict at one rung: stop unless ``value`` is in the best ``keep_fraction``."""
    if len(peer_values) < settings.min_peers:
        return False
    if not math.isfinite(value):
        return True
    group = len(peer_values) + 1
    keep = max(1, math.ceil(settings.keep_fraction * group))
    rank = 1 + sum(1 for v in peer_values if v < value)
    return rank > keep


class EarlyStopping:
    """The ``on_eval`` callback of one trial: publishes rung values, answers "stop?".

    Args:
        study: The study (other trials' rung values are read from it).
        trial: This trial.
        settings: The space's ``early_stopping`` section.
        costs: This trial's cost metrics (``peer_metric_values``).
        total_tokens: Training tokens of the full budget (None for a wall-clock budget).
        total_seconds: Seconds of a wall-clock budget (None otherwise).
        protected: Never stop this trial (baselines); it still publishes its rung values.
    """

    def __init__(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        settings: EarlyStoppingSettings,
        costs: Mapping[str, float],
        *,
        total_tokens: int | None,
        total_seconds: float | None = None,
        protected: bool = False,
    ) -> None:
        self.study, self.trial, self.settings = study, trial, settings
        self.costs = dict(costs)
        self.total_tokens, self.total_seconds = total_tokens, total_seconds
        self.protected = protected
        self.started = time.monotonic()
        self._next_rung = 0
        self.stopped_at: float | None = None
        trial.set_user_attr(PEER_METRICS_ATTR, self.costs)

    def progress(self, tokens_seen: int) -> float:
        """Share of the budget spent."""
        if self.total_tokens:
            return tokens_seen / self.total_tokens
        if self.total_seconds:
            return (time.monotonic() - self.started) / self.total_seconds
        return 0.0

    def __call__(self, tokens_seen: int, val_nll: float) -> bool:
        rungs = self.settings.rungs
        progress = self.progress(tokens_seen)
        stop = False
        # The first evaluation at or past a rung stands for it (evaluations rarely land exactly).
        while self._next_rung < len(rungs) and progress >= rungs[self._next_rung]:
            rung = rungs[self._next_rung]
            self._next_rung += 1
            key = RUNG_ATTR.format(rung)
            self.trial.set_user_attr(key, float(val_nll))
            if not self.protected and not stop:
                stop = should_stop(float(val_nll), self._peer_values(key), self.settings)
                if stop:
                    self.stopped_at = rung
        return stop

    def _peer_values(self, key: str) -> list[float]:
        values = []
        from optuna.trial import TrialState

        # FAIL and WAITING trials are left out: a retry carries its failed original's attributes.
        for other in self.study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        ):
            if other.number == self.trial.number or key not in other.user_attrs:
                continue
            costs = other.user_attrs.get(PEER_METRICS_ATTR) or {}
            if are_peers(self.costs, costs, self.settings.peer_ratio):
                values.append(float(other.user_attrs[key]))
        return values
