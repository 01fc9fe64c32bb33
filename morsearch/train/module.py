"""``MoRLightningModule``: the loss, optimiser, schedule and metrics of one MoR training run.

    loss = cross-entropy(next token)                       nats/token
         + out.aux_loss                                    router losses, weighted by the ModelConfig
                                                           (EC: BCE aux + z-loss; TC: balancing + z-loss)

AdamW (decoupled weight decay on matrices only) with a linear warm-up followed
by either WSD (stable at the peak, then a linear cool-down over the last
``decay_fraction`` of the run: the paper's main schedule) or cosine decay.
Progress through the schedule is the share of the step budget done, or of the
wall-clock budget for ``kind: seconds``.

Validation runs the model in eval mode, i.e. with the causal per-token routing
rule that decoding uses, and reports NLL (nats/token), perplexity, next-token
accuracy and the share of tokens reaching each recursion depth.
"""

from __future__ import annotations

import contextlib
import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics

from morsearch.config import ModelConfig, TrainBudget
from morsearch.errors import TrainingError
from morsearch.model import build_model


def lr_factor(budget: TrainBudget, progress: float) -> float:
    """Learning rate as a share of the peak at ``progress`` in [0, 1] of the run.

    Args:
        budget: Gives the schedule, warm-up and cool-down shares and the final share.
        progress: Share of the run done (steps or seconds).

    Returns:
        Multiplier of ``budget.learning_rate``.
    """
    progress = min(max(progress, 0.0), 1.0)
    floor = budget.min_lr_fraction
    if budget.warmup_fraction > 0 and progress < budget.warmup_fraction:
        return progress / budget.warmup_fraction
    if budget.schedule == "wsd":
        decay_start = 1.0 - budget.decay_fraction
        if progress <= decay_start or budget.decay_fraction == 0:
            return 1.0
        return floor + (1 - floor) * (1.0 - progress) / budget.decay_fraction
    span = 1.0 - budget.warmup_fraction
    done = (progress - budget.warmup_fraction) / span if span > 0 else 1.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


class MoRLightningModule(pl.LightningModule):
    """One MoR model trained on next-token prediction plus its routers' auxiliary losses.

    Args:
        model_config: The architecture; the model is built (seeded by the caller) here.
        budget: Optimiser, schedule and precision settings.
        total_steps: Optimizer steps of the run, for the schedule; None for a seconds budget.
        check_finite_every: Check the loss for NaN/inf every this many steps (1 on CPU; on a GPU
            a check forces a device sync, so it is spaced out).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        budget: TrainBudget,
        total_steps: int | None,
        *,
        check_finite_every: int = 1,
    ) -> None:
        super().__init__()
        self.model_config, self.budget, self.total_steps = model_config, budget, total_steps
        self.check_finite_every = check_finite_every
        self.model = build_model(model_config)
        self.compiled = False
        self.train_started: float | None = None
        self.last_loss = torch.zeros(())  # detached, for progress displays
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self.val_metrics: dict[str, float] = {}  # of the last validation
        self.val_nll = torchmetrics.MeanMetric()
        self.val_accuracy = torchmetrics.MeanMetric()
        self.val_routing = torch.nn.ModuleList(
            torchmetrics.MeanMetric() for _ in range(self.model.schedule.num_block_steps)
        )

    def compile_model(self) -> None:
        """Compile each unique layer in place (``MoRModel.compile_layers``; graphs are built on the
        first step). Routing stays eager, and validation runs eager too: its causal routing gives
        a new token count per batch, which would only trigger recompiles."""
        self.model.compile_layers()
        self.compiled = True

    # --- training --------------------------------------------------------------
    def progress(self) -> float:
        """Share of the run done: steps for step-counted budgets, wall clock for seconds."""
        if self.total_steps is not None:
            return self.global_step / self.total_steps
        if self.train_started is None:
            return 0.0
        return (time.perf_counter() - self.train_started) / self.budget.value

    def on_train_start(self) -> None:
        self.train_started = time.perf_counter()
        self._nonfinite = self._nonfinite.to(self.device)

    def on_train_batch_start(self, batch: torch.Tensor, batch_idx: int) -> None:
        lr = self.budget.learning_rate * lr_factor(self.budget, self.progress())
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        idx, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        out = self.model(idx)
        lm_loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten())
        loss = lm_loss + out.aux_loss.float()
        self.last_loss = lm_loss.detach()
        # accumulate on the device; looking at it costs a sync, so only every few steps
        self._nonfinite = self._nonfinite | ~torch.isfinite(loss.detach())
        if (self.global_step + 1) % self.check_finite_every == 0:
            self.raise_if_nonfinite()
        return loss

    def raise_if_nonfinite(self) -> None:
        """Stop the run with reason "nan" if any loss so far was NaN or infinite."""
        if bool(self._nonfinite):
            error = TrainingError(
                f"non-finite training loss by step {self.global_step + 1}; lower learning_rate "
                f"(now {self.budget.learning_rate:g}) or check the model config"
            )
            error.reason = "nan"  # type: ignore[attr-defined]  # what the search records as the failure
            raise error

    def on_train_batch_end(self, outputs: object, batch: torch.Tensor, batch_idx: int) -> None:
        self.model.after_optimizer_step()
        if self.total_steps is None and self.progress() >= 1.0:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.budget.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # foreach, not fused: Lightning's mixed-precision plugin refuses to clip the gradients of
        # an optimizer that unscales them itself (fused AdamW), and clipping is part of the recipe.
        return torch.optim.AdamW(
            groups, lr=self.budget.learning_rate, betas=(self.budget.beta1, self.budget.beta2), foreach=True
        )

    # --- validation ------------------------------------------------------------
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        idx, targets = batch[:, :-1], batch[:, 1:]
        with torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext():
            out = self.model(idx)  # eval mode: the causal per-token routing of decoding
        logits = out.logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        accuracy = (logits.argmax(-1) == targets).float().mean()
        tokens = targets.numel()
        self.val_nll.update(nll, weight=tokens)
        self.val_accuracy.update(accuracy, weight=tokens)
        for i, share in enumerate(out.step_token_fraction):
            self.val_routing[i].update(share, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        metrics = {"val_nll": nll, "val_perplexity": nll.exp(), "val_accuracy": self.val_accuracy.compute()}
        metrics |= {f"routing_step{i}": metric.compute() for i, metric in enumerate(self.val_routing)}
        self.val_metrics = {name: float(value) for name, value in metrics.items()}
        for metric in [self.val_nll, self.val_accuracy, *self.val_routing]:
            metric.reset()
