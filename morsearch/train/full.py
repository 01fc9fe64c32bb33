"""``train_full``: train one chosen configuration at full budget, with progress, checkpoints and resume.

Where a proxy is bare and silent, a full run is what a user watches and keeps:

    OUT/checkpoints/last.ckpt   Lightning checkpoint (model, optimiser, step, data position,
                                validation curve so far), written every ``checkpoint_every``
                                steps and on Ctrl-C; the next call with the same OUT resumes
                                from it
    OUT/model.pt                the trained weights and their ModelConfig, a plain dict of
                                tensors and numbers (``morsearch.model.load_trained``, or
                                ``torch.load(path, weights_only=True)``)
    OUT/metrics.json            final validation metrics, the whole run's curve, throughput

Checkpoints are only written between optimizer steps, after that step's validation,
so a resumed run continues exactly where the saved one stood. A first Ctrl-C asks
for such a stop: the current step (and validation) finishes, the checkpoint is
written and ``KeyboardInterrupt`` is raised; a second Ctrl-C stops at once without
a new checkpoint (the run then resumes from the last periodic one).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from morsearch.config import DataConfig, ModelConfig, TrainBudget
from morsearch.model import save_trained, sizing
from morsearch.train.proxy import EvalRecorder, eval_interval, make_trainer, prepare, resolve_device

LAST = "last"


@dataclass(frozen=True)
class FullResult:
    """What a full training run wrote and measured."""

    val_nll: float
    val_perplexity: float
    val_accuracy: float
    routing: list[float]
    curve: list[tuple[int, float]]  # (tokens, val NLL) at every validation of the run, resumed or not
    routing_curve: list[tuple[int, list[float]]]  # (tokens, share reaching each step) per validation
    steps: int
    tokens_seen: int
    training_flops: float
    train_tokens_per_s: float
    seconds: float
    resumed_from_step: int
    model_path: str
    checkpoint_path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eta_seconds(
    step: int, total_steps: int | None, steps_per_s: float, elapsed: float, budget_seconds: float | None
) -> float | None:
    """Seconds left: the remaining steps at the current rate, or what is left of a wall-clock budget.

    Returns:
        None while there is no estimate yet (no rate, or neither a step total nor a time budget).
    """
    if total_steps is not None:
        return (total_steps - step) / steps_per_s if steps_per_s > 0 else None
    if budget_seconds is not None:
        return max(budget_seconds - elapsed, 0.0)
    return None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class _ProgressBar(pl.Callback):
    """A rich progress bar: steps, tokens/s, training loss, last validation NLL and ETA."""

    def __init__(
        self,
        total_steps: int | None,
        tokens_per_step: int,
        refresh_every: int,
        enabled: bool,
        budget_seconds: float | None = None,
    ) -> None:
        self.total_steps, self.tokens_per_step, self.refresh_every = total_steps, tokens_per_step, refresh_every
        self.budget_seconds = budget_seconds  # a seconds budget has no step total: its ETA is the time left
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[rate]} tok/s  loss {task.fields[loss]}  val {task.fields[val]}  ETA {task.fields[eta]}"
            ),
            disable=not enabled,
        )
        self.task: Any = None
        self.window: tuple[float, int] = (0.0, 0)
        self.started = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=self.total_steps,
            completed=trainer.global_step,
            rate="-",
            loss="-",
            val="-",
            eta=_clock(None),
        )
        self.started = time.perf_counter()
        self.window = (self.started, trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.refresh_every and step != self.total_steps:
            return
        now = time.perf_counter()
        started, first = self.window
        steps_per_s = (step - first) / max(now - started, 1e-9)
        eta = eta_seconds(step, self.total_steps, steps_per_s, now - self.started, self.budget_seconds)
        loss = float(pl_module.last_loss)  # type: ignore[attr-defined]  # one sync per refresh
        rate = f"{steps_per_s * self.tokens_per_step:,.0f}"
        self.progress.update(self.task, completed=step, rate=rate, loss=f"{loss:.3f}", eta=_clock(eta))
        self.window = (now, step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.task is not None:
            self.progress.update(self.task, val=f"{pl_module.val_metrics['val_nll']:.3f}")  # type: ignore[attr-defined]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.progress.stop()


class _StepBoundary(pl.Callback):
    """Checkpoints and Ctrl-C stops, both between optimizer steps (after that step's validation).

    Lightning's own step checkpoints are written before the step's validation, so a
    run resumed from one would miss that point of its curve; here the hook is the
    start of the next step, when everything of the last one is done.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self.stop_requested = False  # set by the first Ctrl-C
        self.interrupted_at: int | None = None  # step saved by a Ctrl-C stop
        self.resumed_from = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resumed_from = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self.resumed_from:
            return  # nothing new since the start or the checkpoint resumed from
        if self.stop_requested:
            self._save(trainer)
            self.interrupted_at = step
            print(f"interrupted at step {step}; saved {self.path}; run the same command again to resume")
            raise KeyboardInterrupt
        if step % self.every == 0:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        # Lightning has already counted the next batch as "ready"; its restart resets only the
        # per-epoch counter, so the run-wide one (which times validation) would stay one batch
        # ahead. Save the counters as they stood when step N ended, as after a finished fit.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        progress.total.ready -= 1
        progress.current.ready -= 1
        try:
            trainer.save_checkpoint(self.path)
        finally:
            progress.total.ready += 1
            progress.current.ready += 1

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and self.interrupted_at is None:
            print(f"stopped at once: no checkpoint of step {trainer.global_step}; a new run resumes from {self.path}")


@contextlib.contextmanager
def _stop_on_ctrl_c(boundary: _StepBoundary) -> Iterator[None]:
    """First SIGINT: stop at the next step boundary; second: ``KeyboardInterrupt`` at once.

    Only the main thread can install signal handlers; elsewhere Ctrl-C keeps its default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if boundary.stop_requested:
            raise KeyboardInterrupt
        boundary.stop_requested = True
        print("\nCtrl-C: saving a checkpoint after this step (press again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        # Lightning ignores SIGINT after an interrupt; give the caller back its own handler
        signal.signal(signal.SIGINT, previous)


def train_full(
    model_config: ModelConfig,
    budget: TrainBudget,
    data: DataConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    device: str | torch.device | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
) -> FullResult:
    """Train ``model_config`` for the whole ``budget``, checkpointing into ``out_dir``.

    Args:
        model_config: The architecture.
        budget: The full training budget (FLOPs by default) and optimiser settings.
        data: Training and validation data.
        out_dir: Folder for checkpoints, final weights and metrics (created).
        resume: Continue from ``out_dir/checkpoints/last.ckpt`` when it exists.
        device: Where to train; None or "auto" picks the GPU when there is one.
        checkpoint_every: Steps between checkpoints.
        progress: Show a progress bar.
        callbacks: More Lightning callbacks for the trainer (run after morsearch's own).

    Returns:
        Final metrics and the paths written.

    Raises:
        DataError, ConfigError, TrainingError: As ``run_proxy``.
        KeyboardInterrupt: Ctrl-C stopped the run (after checkpointing, on the first press).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    target = resolve_device(device)
    module, datamodule, total_steps = prepare(model_config, budget, data, target)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)  # only once the data is known to be good
    if budget.compile:
        module.compile_model()
    recorder = EvalRecorder(budget.tokens_per_step, target, on_eval=None)
    refresh = 1 if target.type == "cpu" else 20
    last = out / "checkpoints" / f"{LAST}.ckpt"
    boundary = _StepBoundary(last, checkpoint_every)
    seconds = budget.value if budget.kind == "seconds" else None
    bar = _ProgressBar(total_steps, budget.tokens_per_step, refresh, progress, budget_seconds=seconds)
    trainer = make_trainer(
        budget,
        target,
        total_steps,
        eval_interval(budget, total_steps, datamodule.num_val_tokens),
        [recorder, boundary, bar, *callbacks],
        barebones=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(out),
    )
    ckpt_path = str(last) if resume and last.is_file() else None
    resumed_from = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"]) if ckpt_path else 0
    with _stop_on_ctrl_c(boundary):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SystemExit:
            # Lightning answers KeyboardInterrupt with sys.exit(1) after its on_exception hooks
            if not trainer.interrupted:
                raise
            raise KeyboardInterrupt from None
    if recorder.last_eval_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(last)

    model_path = out / "model.pt"
    save_trained(module.model, model_path, step=trainer.global_step)
    metrics = module.val_metrics
    tokens = trainer.global_step * budget.tokens_per_step
    train_seconds = max(recorder.train_end - recorder.train_start - recorder.val_seconds, 1e-9)
    result = FullResult(
        val_nll=metrics["val_nll"],
        val_perplexity=metrics["val_perplexity"],
        val_accuracy=metrics["val_accuracy"],
        routing=[value for name, value in metrics.items() if name.startswith("routing_step")],
        curve=recorder.curve,
        routing_curve=recorder.routing_curve,
        steps=trainer.global_step,
        tokens_seen=tokens,
        training_flops=tokens * sizing.training_flops_per_token(model_config, budget.seq_len),
        train_tokens_per_s=(trainer.global_step - resumed_from) * budget.tokens_per_step / train_seconds,
        seconds=time.perf_counter() - started,
        resumed_from_step=resumed_from,
        model_path=str(model_path),
        checkpoint_path=str(last),
    )
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
