"""``train_full``: train one chosen configuration at full budget, with progress, checkpoints and resume.

Where a proxy is bare and silent, a full run is what a user watches and keeps:

    OUT/checkpoints/last.ckpt   Lightning checkpoint (model, optimiser, step, data position),
                                written every ``checkpoint_every`` steps and on Ctrl-C; the
                                next call with the same OUT resumes from it
    OUT/model.pt                the trained weights and their ModelConfig, a plain dict of
                                tensors and numbers: ``torch.load(path, weights_only=True)``
    OUT/metrics.json            final validation metrics, curve, throughput, phase times
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from morsearch.config import DataConfig, ModelConfig, TrainBudget
from morsearch.model import sizing
from morsearch.train.proxy import EvalRecorder, eval_interval, make_trainer, prepare, resolve_device

LAST = "last"


@dataclass(frozen=True)
class FullResult:
    """What a full training run wrote and measured."""

    val_nll: float
    val_perplexity: float
    val_accuracy: float
    routing: list[float]
    curve: list[tuple[int, float]]  # validations of this invocation (a resumed run starts mid-way)
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


class _ProgressBar(pl.Callback):
    """A rich progress bar: steps, tokens/s, training loss, ETA; saves a checkpoint on Ctrl-C."""

    def __init__(self, total_steps: int | None, tokens_per_step: int, refresh_every: int, enabled: bool) -> None:
        self.total_steps, self.tokens_per_step, self.refresh_every = total_steps, tokens_per_step, refresh_every
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} tok/s  loss {task.fields[loss]}  val {task.fields[val]}"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task: Any = None
        self.window: tuple[float, int] = (0.0, 0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=self.total_steps, completed=trainer.global_step, rate="-", loss="-", val="-"
        )
        self.window = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.refresh_every and step != self.total_steps:
            return
        now = time.perf_counter()
        started, first = self.window
        rate = (step - first) * self.tokens_per_step / max(now - started, 1e-9)
        loss = float(pl_module.last_loss)  # type: ignore[attr-defined]  # one sync per refresh
        self.progress.update(self.task, completed=step, rate=f"{rate:,.0f}", loss=f"{loss:.3f}")
        self.window = (now, step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.task is not None:
            self.progress.update(self.task, val=f"{pl_module.val_metrics['val_nll']:.3f}")  # type: ignore[attr-defined]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.progress.stop()
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0:
            path = Path(trainer.default_root_dir) / "checkpoints" / f"{LAST}.ckpt"
            trainer.save_checkpoint(path)
            print(f"interrupted at step {trainer.global_step}; saved {path}; run the same command again to resume")


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

    Returns:
        Final metrics and the paths written.

    Raises:
        DataError, ConfigError, TrainingError: As ``run_proxy``.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    target = resolve_device(device)
    module, datamodule, total_steps = prepare(model_config, budget, data, target)
    if budget.compile:
        module.compile_model()
    recorder = EvalRecorder(budget.tokens_per_step, target, on_eval=None)
    refresh = 1 if target.type == "cpu" else 20
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename=LAST,
        every_n_train_steps=checkpoint_every,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks = [recorder, checkpoints, _ProgressBar(total_steps, budget.tokens_per_step, refresh, progress)]
    trainer = make_trainer(
        budget,
        target,
        total_steps,
        eval_interval(budget, total_steps, datamodule.num_val_tokens),
        callbacks,
        barebones=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(out),
    )
    last = out / "checkpoints" / f"{LAST}.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    resumed_from = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"]) if ckpt_path else 0
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if recorder.last_eval_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(last)

    model_path = out / "model.pt"
    torch.save(
        {
            "model_config": model_config.model_dump(mode="json"),
            "state_dict": {name: tensor.cpu() for name, tensor in module.model.state_dict().items()},
            "step": trainer.global_step,
        },
        model_path,
    )
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
