"""The objective of one trial: suggest -> pre-filter -> reuse -> train -> measure -> record.

::

    suggest(trial, space) ─▶ TrialSpec ─▶ violates_caps? ── yes ─▶ PRUNED "infeasible" + constraint values
                                            │ no                       (no training, not counted)
                                            ▼
                           identical config already trained? ── yes ─▶ reuse its metrics (COMPLETE)
                                            │ no
                                            ▼
                run_proxy(on_eval=early stopping) ── stopped ─▶ PRUNED (not measured)
                                            │
                                            ▼
                 measure(trained model, target) ─▶ metrics ─▶ constraints + objective values (COMPLETE)

The worker tells Optuna and then writes the returned record (curve, measurement,
routing, phase timings, hardware, versions, failure reason) to the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from morsearch import store
from morsearch.config.space import METRICS, SearchSpace
from morsearch.errors import ConfigError
from morsearch.search.distributions import ATTR_BASELINE, TrialSpec, suggest, violates_caps
from morsearch.search.pruning import EarlyStopping, peer_metric_values
from morsearch.search.samplers import set_constraints
from morsearch.search.worker import (
    PREFILTERED_ATTR,
    GracefulStop,
    Outcome,
    TrialInterrupted,
    classify_failure,
    worker_id,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from morsearch.measure import Measurement
    from morsearch.search.device_locks import DeviceLock
    from morsearch.train import ProxyResult


def metric_values(spec: TrialSpec, result: ProxyResult, measurement: Measurement) -> dict[str, float]:
    """Every metric of ``METRICS`` for one trained and measured trial, read from its declared source."""
    sources: dict[str, Any] = {"ProxyResult": result, "Measurement": measurement, "ModelConfig": spec.model}
    values = {}
    for name, metric in METRICS.items():
        owner, attribute = metric.source.split(".", 1)
        value = getattr(sources[owner], attribute.removesuffix("()"))
        values[name] = float(value() if attribute.endswith("()") else value)
    return values


def hardware() -> dict[str, Any]:
    """What this worker runs on (the device a trial trained on)."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "cpu": platform.processor() or platform.machine()}
    info["cpu_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        info["cuda_device"] = torch.cuda.get_device_name(index)
        info["cuda_memory_bytes"] = torch.cuda.get_device_properties(index).total_memory
    return info


def versions() -> dict[str, str]:
    """Library versions that shaped a result."""
    import pytorch_lightning
    import torch

    import morsearch

    return {
        "morsearch": morsearch.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "lightning": pytorch_lightning.__version__,
        "optuna": optuna.__version__,
    }


class SearchObjective:
    """Runs one trial of ``space``; call it with an Optuna trial, get an ``Outcome``.

    Args:
        space: The search space.
        study: The study (early stopping reads the other trials' rung values).
        engine: The store (reuse of identical configurations).
        stop: The worker's stop request: the running training stops at its next evaluation.
        device: Training device (None: the GPU when there is one).
        early_stopping: Override the space's ``early_stopping.enabled``.
        reuse: Reuse stored results of identical configurations.
        prefilter: Reject configurations that analytically break a cap before training
            (off only to measure what pre-filtering saves).
        train: ``run_proxy`` (replaceable for benchmarks that simulate training).
        measure: ``measure`` (same).
    """

    def __init__(
        self,
        space: SearchSpace,
        study: optuna.Study,
        engine: Engine,
        *,
        stop: GracefulStop | None = None,
        device: str | None = None,
        early_stopping: bool | None = None,
        reuse: bool = True,
        prefilter: bool = True,
        train: Callable[..., ProxyResult] | None = None,
        measure: Callable[..., Measurement] | None = None,
    ) -> None:
        if train is None or measure is None:
            from morsearch.search.device_locks import host_work

            with host_work():  # seconds of CPU: a CPU measurement of another worker waits for them
                from morsearch.measure import measure as measure_model
                from morsearch.train import run_proxy

            train, measure = train or run_proxy, measure or measure_model
        self.space, self.study, self.engine = space, study, engine
        self.stop = stop or GracefulStop()
        self.device = device
        self.early_stopping = space.early_stopping.enabled if early_stopping is None else early_stopping
        self.reuse, self.prefilter = reuse, prefilter
        self.train, self.measure = train, measure
        self._hardware: dict[str, Any] | None = None

    def __call__(self, trial: optuna.Trial) -> Outcome:
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        try:
            spec = suggest(trial, self.space)
        except ConfigError as exc:
            return Outcome(TrialState.FAIL, attrs={"failure_reason": "config", "failure_detail": str(exc)})
        key = spec.fingerprint()
        base = self._base_record(trial, spec, key, started)
        trial.set_user_attr("model_config", base["model_config"])
        trial.set_user_attr("config_hash", key)

        broken = violates_caps(spec, self.space) if self.prefilter else []
        if broken:
            # PRUNED with its constraint values, not FAIL: samplers ignore failed trials, while
            # TPE ranks a pruned infeasible one among its bad trials and so learns to avoid it.
            for cap in broken:
                trial.set_constraint(cap.name, cap.violation)
            detail = "; ".join(cap.message for cap in broken)
            return Outcome(
                TrialState.PRUNED,
                record=store.TrialRecord(**base, state="failed", failure_reason="infeasible", failure_detail=detail),
                attrs={PREFILTERED_ATTR: True, "failure_reason": "infeasible", "failure_detail": detail},
            )
        if self.reuse:
            cached = store.find_completed(self.engine, key)
            wanted = {objective.metric for objective in self.space.objectives}
            if cached is not None and wanted <= set(cached.objectives or {}):
                return self._reused(trial, base, cached)

        from morsearch.search import device_share  # loads torch and Lightning, once a trial trains

        pruner = self._pruner(trial, spec)
        # the set-up before the first batch (data, model, trainer) is work on the device too
        sharing = device_share.SharedDeviceCallback(self.device, from_start=True)
        alone: DeviceLock | None = None

        def waited() -> float:  # on other workers' use of the device: not this trial's device time
            return sharing.waited_seconds + (alone.waited_seconds if alone is not None else 0.0)

        try:
            with contextlib.closing(sharing):  # released before measuring, also after a failed set-up
                result = self.train(
                    spec.model,
                    spec.budget,
                    spec.data,
                    on_eval=self._on_eval(pruner),
                    device=self.device,
                    callbacks=[sharing],
                )
            if self.stop.event.is_set() and result.stopped_early:
                raise TrialInterrupted
            measurement = None
            if not result.stopped_early:
                with device_share.measuring_alone(spec.target) as alone:
                    measurement = self.measure(result.model, spec.target)
        except TrialInterrupted:
            raise
        except Exception as exc:  # a trial's failure is a result: record why, the worker goes on
            return self._failed(base, exc, clock, waited())
        return self._finished(trial, spec, base, result, measurement, clock, waited())

    # --- the pieces ---------------------------------------------------------------------------

    def _base_record(self, trial: optuna.Trial, spec: TrialSpec, key: str, started: dt.datetime) -> dict[str, Any]:
        from morsearch.model import sizing

        if self._hardware is None:
            self._hardware = {"hardware": hardware(), "versions": versions()}
        return {
            "study_name": self.study.study_name,
            "trial_number": trial.number,
            "optuna_trial_id": trial._trial_id,
            "config_hash": key,
            "model_config": spec.model.model_dump(mode="json"),
            "budget": spec.budget.model_dump(mode="json"),
            "data": spec.data.model_dump(mode="json"),
            "target": spec.target.model_dump(mode="json"),
            "analytic": sizing.describe(spec.model, seq_len=spec.budget.seq_len),
            "worker": worker_id(),
            "started_at": started,
            **self._hardware,
        }

    def _pruner(self, trial: optuna.Trial, spec: TrialSpec) -> EarlyStopping | None:
        if not self.early_stopping:
            return None
        from morsearch.train.proxy import planned_steps

        steps = planned_steps(spec.model, spec.budget)
        settings = self.space.early_stopping
        return EarlyStopping(
            self.study,
            trial,
            settings,
            peer_metric_values(spec, settings.peer_metrics),
            total_tokens=steps * spec.budget.tokens_per_step if steps is not None else None,
            total_seconds=spec.budget.value if spec.budget.kind == "seconds" else None,
            protected=trial.user_attrs.get(ATTR_BASELINE) is not None,
        )

    def _on_eval(self, pruner: EarlyStopping | None) -> Callable[[int, float], bool]:
        def on_eval(tokens_seen: int, val_nll: float) -> bool:
            if self.stop.event.is_set():
                return True  # Ctrl-C: end this training now; the worker re-enqueues the trial
            return pruner(tokens_seen, val_nll) if pruner is not None else False

        return on_eval

    def _values(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        return tuple(metrics[objective.metric] for objective in self.space.objectives)

    def _finished(
        self,
        trial: optuna.Trial,
        spec: TrialSpec,
        base: dict[str, Any],
        result: ProxyResult,
        measurement: Measurement | None,
        clock: float,
        waited: float,
    ) -> Outcome:
        seconds = time.perf_counter() - clock
        held = seconds - waited
        record: dict[str, Any] = dict(
            base,
            val_nll=result.val_nll,
            tokens_seen=result.tokens_seen,
            stopped_early=result.stopped_early,
            routing=list(result.routing),
            phase_seconds={**result.phase_seconds, "trial": seconds, "device_wait": waited},
            device_seconds=held,
            curve=tuple(result.curve),
        )
        attrs = {"gpu_seconds": held}
        if measurement is None:  # stopped early: quality alone decided, nothing measured
            return Outcome(TrialState.PRUNED, record=store.TrialRecord(**record, state="pruned"), attrs=attrs)
        metrics = metric_values(spec, result, measurement)
        constraints = set_constraints(trial, self.space, metrics)
        record.update(objectives=metrics, constraints=constraints, measurement=measurement.to_dict())
        return Outcome(TrialState.COMPLETE, self._values(metrics), store.TrialRecord(**record, state="complete"), attrs)

    def _reused(self, trial: optuna.Trial, base: dict[str, Any], cached: store.TrialRecord) -> Outcome:
        constraints = set_constraints(trial, self.space, cached.objectives or {})
        origin = f"{cached.study_name}#{cached.trial_number}"
        record = store.TrialRecord(
            **base,
            state="complete",
            objectives=cached.objectives,
            constraints=constraints,
            val_nll=cached.val_nll,
            tokens_seen=cached.tokens_seen,
            reused_from=origin,
            routing=cached.routing,
            phase_seconds=cached.phase_seconds,
            device_seconds=0.0,
            curve=cached.curve,
            measurement=cached.measurement,
        )
        attrs = {"reused_from": origin, "gpu_seconds": 0.0}
        return Outcome(TrialState.COMPLETE, self._values(cached.objectives or {}), record, attrs)

    def _failed(self, base: dict[str, Any], exc: Exception, clock: float, waited: float) -> Outcome:
        reason, detail, requested = classify_failure(exc)
        if reason == "oom":
            _release_cuda_memory()
        held = time.perf_counter() - clock - waited
        record = store.TrialRecord(
            **base,
            state="failed",
            failure_reason=reason,
            failure_detail=detail,
            requested_memory_bytes=requested,
            device_seconds=held,
        )
        attrs: dict[str, Any] = {"failure_reason": reason, "failure_detail": detail[-1000:], "gpu_seconds": held}
        if requested is not None:
            attrs["requested_memory_bytes"] = requested
        return Outcome(TrialState.FAIL, record=record, attrs=attrs)


def _release_cuda_memory() -> None:
    # The next trial must not inherit the cached blocks of the one that ran out of memory.
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
