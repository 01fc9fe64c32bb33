"""``run_proxy``: train one configuration on a short budget and report its validation NLL.

This is where a trial's quality objective comes from. The run is a plain
Lightning ``Trainer.fit`` with everything a proxy does not need switched off
(progress bars, loggers, checkpoints, summaries), so its fixed cost stays a
small share of the trial. The search's early stopping enters through
``on_eval(tokens_seen, val_nll) -> stop?``, so this layer never imports optuna.

Phases timed (``ProxyResult.phase_seconds``):

    build     data loaded and checked, model built and moved, trainer made
    compile   torch.compile's first step (0 without compile)
    setup     Lightning's own set-up inside fit, before the first step
    train     optimizer steps (validation excluded)
    validate  every validation pass
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from morsearch.config import DataConfig, ModelConfig, TrainBudget
from morsearch.data import MorDataModule
from morsearch.errors import ConfigError, TrainingError
from morsearch.model import sizing
from morsearch.train.module import MoRLightningModule

OnEval = Callable[[int, float], bool]
# validations per run when budget.eval_every is 0: up to 8, fewer when validating would cost more
# than ~10 % of the run (a validation token costs about a third of a training token)
MAX_EVALUATIONS, MIN_EVALUATIONS, VAL_TO_TRAIN_TOKENS = 8, 2, 0.3
# logits of one validation forward: with their float32 copy and log-softmax, about 1 GiB at most
VAL_LOGIT_ELEMENTS = 2**26
SECONDS_EVAL_EVERY = 100  # steps between validations of a wall-clock budget when eval_every is 0


@dataclass(frozen=True)
class ProxyResult:
    """What one proxy training run measured."""

    val_nll: float  # nats/token on the study's fixed validation set, at the end of the run
    curve: list[tuple[int, float]]  # (training tokens seen, val NLL) at every validation
    tokens_seen: int
    steps: int
    train_tokens_per_s: float  # training tokens / seconds of the train phase
    phase_seconds: dict[str, float]
    routing: list[float]  # share of validation tokens reaching each recursion step, at the end
    routing_curve: list[tuple[int, list[float]]]  # (training tokens seen, routing) at every validation
    stopped_early: bool  # on_eval asked to stop
    val_perplexity: float
    val_accuracy: float  # next-token accuracy
    training_flops: float  # tokens_seen x sizing.training_flops_per_token
    model: nn.Module = field(repr=False, compare=False)  # trained, eval mode, on its device


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: the GPU when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def planned_steps(model_config: ModelConfig, budget: TrainBudget) -> int | None:
    """Optimizer steps the budget allows (None for a wall-clock budget).

    Raises:
        ConfigError: The budget does not pay for a single step, or the sequence is too long.
    """
    if budget.seq_len > model_config.max_seq_len:
        raise ConfigError(
            f"budget.seq_len={budget.seq_len} exceeds the model's max_seq_len={model_config.max_seq_len}; "
            "lower seq_len or raise max_seq_len"
        )
    if budget.kind == "seconds":
        return None
    per_step = {
        "flops": sizing.training_flops_per_token(model_config, budget.seq_len) * budget.tokens_per_step,
        "tokens": float(budget.tokens_per_step),
        "steps": 1.0,
    }[budget.kind]
    steps = int(budget.value / per_step)
    if steps < 1:
        raise ConfigError(
            f"budget: {budget.value:g} {budget.kind} is less than one optimizer step ({per_step:.3g} {budget.kind} "
            f"for {budget.batch_size} x {budget.seq_len} tokens); raise budget.value or lower batch_size"
        )
    return steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EvalRecorder(pl.Callback):
    """Times the phases inside fit, records every validation, and relays it to ``on_eval``."""

    def __init__(self, tokens_per_step: int, device: torch.device, on_eval: OnEval | None) -> None:
        self.tokens_per_step, self.device, self.on_eval = tokens_per_step, device, on_eval
        self.curve: list[tuple[int, float]] = []
        self.routing: list[float] = []
        self.routing_curve: list[tuple[int, list[float]]] = []
        self.val_seconds = 0.0
        self.stopped_early = False
        self.train_start = self.train_end = 0.0
        self.last_eval_step = -1

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints, so a resumed run reports the curve of the whole run."""
        return {
            "curve": [[tokens, nll] for tokens, nll in self.curve],
            "routing_curve": [[tokens, list(shares)] for tokens, shares in self.routing_curve],
            "last_eval_step": self.last_eval_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [(int(tokens), float(nll)) for tokens, nll in state_dict["curve"]]
        self.routing_curve = [
            (int(tokens), [float(s) for s in shares]) for tokens, shares in state_dict["routing_curve"]
        ]
        self.routing = self.routing_curve[-1][1] if self.routing_curve else []
        self.last_eval_step = int(state_dict["last_eval_step"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(self.device)
        self.train_end = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(self.device)
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = pl_module.val_metrics  # type: ignore[attr-defined]
        self.val_seconds += time.perf_counter() - self._val_start
        nll = metrics["val_nll"]
        if not math.isfinite(nll):
            error = TrainingError(f"non-finite validation NLL at step {trainer.global_step}; lower learning_rate")
            error.reason = "nan"  # type: ignore[attr-defined]
            raise error
        tokens = trainer.global_step * self.tokens_per_step
        self.curve.append((tokens, nll))
        self.routing = [value for name, value in metrics.items() if name.startswith("routing_step")]
        self.routing_curve.append((tokens, self.routing))
        self.last_eval_step = trainer.global_step
        if self.on_eval is not None and trainer.state.fn == TrainerFn.FITTING and self.on_eval(tokens, nll):
            self.stopped_early = True
            trainer.should_stop = True


def _quiet_lightning() -> None:
    # Lightning's "GPU available" banners and data-loader hints would print once per trial
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def precision_for(budget: TrainBudget, device: torch.device) -> str:
    """Lightning precision: bf16 autocast on CUDA, fp32 on CPU, unless the budget says otherwise."""
    if budget.precision == "bf16" or (budget.precision == "auto" and device.type == "cuda"):
        return "bf16-mixed"
    return "32-true"


def make_trainer(
    budget: TrainBudget,
    device: torch.device,
    total_steps: int | None,
    eval_every: int,
    callbacks: Sequence[pl.Callback],
    **options: Any,
) -> pl.Trainer:
    """The Lightning trainer of a run; ``options`` override the proxy's bare defaults."""
    _quiet_lightning()
    settings: dict[str, Any] = dict(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision_for(budget, device),
        max_epochs=-1,  # the training stream is endless: cut by max_steps or should_stop
        max_steps=total_steps if total_steps is not None else -1,
        val_check_interval=eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=budget.grad_clip or None,
        callbacks=list(callbacks),
        barebones=True,
    )
    settings.update(options)
    return pl.Trainer(**settings)


def eval_interval(budget: TrainBudget, total_steps: int | None, val_tokens: int) -> int:
    """Steps between validations (``budget.eval_every``, else 2 to 8 per run by cost)."""
    if budget.eval_every:
        return budget.eval_every
    if total_steps is None:
        return SECONDS_EVAL_EVERY
    affordable = int(VAL_TO_TRAIN_TOKENS * total_steps * budget.tokens_per_step / max(val_tokens, 1))
    evaluations = min(max(affordable, MIN_EVALUATIONS), MAX_EVALUATIONS)
    return max(1, math.ceil(total_steps / evaluations))


def validation_batch_size(model_config: ModelConfig, budget: TrainBudget) -> int:
    """Windows per validation forward: the whole validation set in as few forwards as fit.

    A small model's forward costs its kernel launches and routing syncs more than its rows,
    so one forward of k x batch_size windows costs about what one of batch_size does (in
    the paper-space search on an H200, a trial's validations took 6.8 s to its training's
    7.3 s, waits at the device locks included; docs/SEARCH_SPACE.md).
    Without gradients a forward holds about one layer's activations where a training step
    holds every layer's, so up to ``num_layers`` training batches fit in the training's
    memory; the logits, all there at once, are capped on their own. ``budget.val_batch_size``
    overrides it.
    """
    if budget.val_batch_size is not None:
        return budget.val_batch_size
    by_logits = VAL_LOGIT_ELEMENTS // (budget.batch_size * budget.seq_len * model_config.vocab_size)
    return budget.batch_size * max(1, min(budget.val_batches, model_config.num_layers, by_logits))


def prepare(
    model_config: ModelConfig, budget: TrainBudget, data: DataConfig, device: torch.device
) -> tuple[MoRLightningModule, MorDataModule, int | None]:
    """Load and check the data, then build the seeded model on ``device``."""
    total_steps = planned_steps(model_config, budget)
    datamodule = MorDataModule(
        data,
        vocab_size=model_config.vocab_size,
        batch_size=budget.batch_size,
        seq_len=budget.seq_len,
        seed=budget.seed,
        val_batches=budget.val_batches,
        train_tokens=total_steps * budget.tokens_per_step if total_steps is not None else None,
        val_batch_size=validation_batch_size(model_config, budget),
    )
    datamodule.setup()  # data errors surface here, before anything is built
    torch.manual_seed(budget.seed)
    check_every = 1 if device.type == "cpu" else 50
    module = MoRLightningModule(model_config, budget, total_steps, check_finite_every=check_every)
    return module.to(device), datamodule, total_steps


def _compile_first_step(module: MoRLightningModule, datamodule: MorDataModule, precision: str) -> None:
    """Compile with one forward/backward outside the timed training (gradients are then dropped)."""
    module.compile_model()
    batch = next(iter(datamodule.train_dataloader())).to(module.device)
    with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        out = module.model(batch[:, :-1])
        loss = out.logits.float().mean() + out.aux_loss.float()
    loss.backward()
    module.model.zero_grad(set_to_none=True)
    _sync(module.device)


def run_proxy(
    model_config: ModelConfig,
    budget: TrainBudget,
    data: DataConfig,
    on_eval: OnEval | None = None,
    device: str | torch.device | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> ProxyResult:
    """Train ``model_config`` on ``budget`` and score it on the fixed validation set of ``data``.

    Args:
        model_config: The architecture to train (random init seeded by ``budget.seed``).
        budget: How long (FLOPs by default), the batch shape and the optimiser settings.
        data: The data; its validation split is the same for every trial of a study.
        on_eval: Called after every validation with (training tokens seen, val NLL); returning
            True stops the run early (the search's pruning).
        device: Where to train; None or "auto" picks the GPU when there is one.
        callbacks: More Lightning callbacks for the trainer (the search's device sharing).

    Returns:
        The final validation NLL, the curve, throughput, phase times, routing shares and the model.

    Raises:
        DataError: The data is missing, unreadable or too small (before any training).
        ConfigError: The budget does not fit the model (sequence too long, budget below one step).
        TrainingError: The loss became NaN or infinite (``error.reason == "nan"``).
        torch.OutOfMemoryError: The GPU ran out of memory (the search records it as ``oom``).
    """
    started = time.perf_counter()
    target = resolve_device(device)
    module, datamodule, total_steps = prepare(model_config, budget, data, target)
    recorder = EvalRecorder(budget.tokens_per_step, target, on_eval)
    every = eval_interval(budget, total_steps, datamodule.num_val_tokens)
    trainer = make_trainer(budget, target, total_steps, every, [recorder, *callbacks])
    _sync(target)
    phases = {"build": time.perf_counter() - started, "compile": 0.0}

    if budget.compile:
        compile_start = time.perf_counter()
        _compile_first_step(module, datamodule, precision_for(budget, target))
        phases["compile"] = time.perf_counter() - compile_start

    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    if recorder.last_eval_step != trainer.global_step and not recorder.stopped_early:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # score the final weights
    fit_seconds = time.perf_counter() - fit_start

    train_seconds = max(recorder.train_end - recorder.train_start - recorder.val_seconds, 1e-9)
    phases["train"] = train_seconds
    phases["validate"] = recorder.val_seconds
    phases["setup"] = max(fit_seconds - train_seconds - recorder.val_seconds, 0.0)

    tokens = trainer.global_step * budget.tokens_per_step
    metrics = module.val_metrics
    return ProxyResult(
        val_nll=recorder.curve[-1][1],
        curve=recorder.curve,
        tokens_seen=tokens,
        steps=trainer.global_step,
        train_tokens_per_s=tokens / train_seconds,
        phase_seconds=phases,
        routing=recorder.routing,
        routing_curve=recorder.routing_curve,
        stopped_early=recorder.stopped_early,
        val_perplexity=metrics["val_perplexity"],
        val_accuracy=metrics["val_accuracy"],
        training_flops=tokens * sizing.training_flops_per_token(model_config, budget.seq_len),
        model=module.model.eval(),
    )
