from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from morsearch.config import DataConfig
from morsearch.errors import DataError, TrainingError
from morsearch.train import run_proxy

from .helpers import DATA, steps_budget, tiny_mor


def test_proxy_learns_and_reports_everything() -> None:
    result = run_proxy(tiny_mor(), steps_budget(30), DATA, device="cpu")
    assert result.steps == 30 and result.tokens_seen == 30 * 8 * 32
    assert [tokens for tokens, _ in result.curve] == [2560, 5120, 7680]
    assert result.val_nll == result.curve[-1][1]
    assert result.val_nll < math.log(128) - 1.0  # well below a uniform guess
    assert result.curve[-1][1] < result.curve[0][1]
    assert result.val_perplexity == pytest.approx(math.exp(result.val_nll), rel=1e-5)
    assert 0.0 < result.val_accuracy < 1.0
    assert len(result.routing) == 2 and result.routing[0] == 1.0 and result.routing[1] <= 1.0
    assert [tokens for tokens, _ in result.routing_curve] == [2560, 5120, 7680]
    assert result.routing_curve[-1][1] == result.routing
    assert set(result.phase_seconds) == {"build", "compile", "setup", "train", "validate"}
    assert result.train_tokens_per_s > 0 and result.training_flops > 0
    assert not result.model.training and not result.stopped_early


def test_final_weights_are_scored_when_steps_do_not_divide() -> None:
    result = run_proxy(tiny_mor(), steps_budget(25), DATA, device="cpu")
    assert [tokens for tokens, _ in result.curve] == [2560, 5120, 6400]


def test_on_eval_can_stop_the_run() -> None:
    seen: list[tuple[int, float]] = []

    def stop_at_second(tokens: int, nll: float) -> bool:
        seen.append((tokens, nll))
        return len(seen) == 2

    result = run_proxy(tiny_mor(), steps_budget(60), DATA, on_eval=stop_at_second, device="cpu")
    assert result.stopped_early and result.steps == 20 and len(result.curve) == 2
    assert seen == result.curve


def test_same_seed_same_curve_on_cpu() -> None:
    first = run_proxy(tiny_mor(), steps_budget(20), DATA, device="cpu")
    second = run_proxy(tiny_mor(), steps_budget(20), DATA, device="cpu")
    for (t1, a), (t2, b) in zip(first.curve, second.curve, strict=True):
        assert t1 == t2 and abs(a - b) <= 1e-6
    other = run_proxy(tiny_mor(), steps_budget(20, seed=1), DATA, device="cpu")
    assert other.curve[-1][1] != first.curve[-1][1]


@pytest.mark.parametrize("router", ["none", "token_choice"])
def test_other_routers_train(router: str) -> None:
    result = run_proxy(tiny_mor(router=router), steps_budget(10), DATA, device="cpu")
    assert math.isfinite(result.val_nll) and len(result.routing) == 2


def test_non_finite_loss_stops_with_reason_nan() -> None:
    with pytest.raises(TrainingError, match="non-finite") as info:
        run_proxy(tiny_mor(), steps_budget(20, learning_rate=1e9, grad_clip=0.0), DATA, device="cpu")
    assert info.value.reason == "nan"  # type: ignore[attr-defined]


def test_seconds_budget_stops_on_time() -> None:
    start = time.perf_counter()
    result = run_proxy(tiny_mor(), steps_budget(kind="seconds", value=1.0, eval_every=1000), DATA, device="cpu")
    assert time.perf_counter() - start < 6.0
    assert result.steps > 1 and len(result.curve) == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("missing.txt", None, "missing.txt: no such file"), ("short.txt", "too short", "fewer than one batch")],
)
def test_bad_data_fails_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: str | None, message: str
) -> None:
    def no_model_yet(*args: object) -> None:
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr("morsearch.train.module.build_model", no_model_yet)
    if content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    data = DataConfig(source="text", path=str(tmp_path / name))
    with pytest.raises(DataError, match=message):
        run_proxy(tiny_mor(), steps_budget(5), data, device="cpu")


def test_default_device_is_cpu_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    result = run_proxy(tiny_mor(), steps_budget(2, eval_every=2), DATA)
    assert next(result.model.parameters()).device.type == "cpu"


def test_user_text_with_a_local_bpe(tmp_path: Path) -> None:
    from morsearch.data import builtin_text

    path = tmp_path / "notes.txt"
    path.write_text(builtin_text(30_000, 2), encoding="utf-8")
    data = DataConfig(source="text", path=str(path), tokenizer="bpe", bpe_vocab_size=300)
    result = run_proxy(tiny_mor(vocab_size=300), steps_budget(6, eval_every=6), data, device="cpu")
    assert math.isfinite(result.val_nll)
    with pytest.raises(DataError, match="beyond the model's vocabulary of 256 \\(tokenizer vocabulary 300\\)"):
        run_proxy(tiny_mor(vocab_size=256), steps_budget(6), data, device="cpu")


def test_validation_forwards_take_as_many_batches_as_fit() -> None:
    from morsearch.train.proxy import VAL_LOGIT_ELEMENTS, validation_batch_size

    budget = steps_budget(batch_size=8, seq_len=32, val_batches=4)
    assert validation_batch_size(tiny_mor(), budget) == 32  # the whole set in one forward
    assert validation_batch_size(tiny_mor(num_layers=2, num_recursions=1, router="none"), budget) == 16  # <= layers
    wide = tiny_mor(vocab_size=VAL_LOGIT_ELEMENTS // (8 * 32) // 2)  # room for two batches' logits
    assert validation_batch_size(wide, budget) == 16
    assert validation_batch_size(tiny_mor(), budget.replace(val_batch_size=8)) == 8


def test_validation_batching_leaves_the_validation_nll_as_it_was() -> None:
    budget = steps_budget(steps=20, val_batches=4)
    one_batch = run_proxy(tiny_mor(), budget.replace(val_batch_size=budget.batch_size), DATA, device="cpu")
    together = run_proxy(tiny_mor(), budget, DATA, device="cpu")
    assert [tokens for tokens, _ in together.curve] == [tokens for tokens, _ in one_batch.curve]
    for (_, a), (_, b) in zip(together.curve, one_batch.curve, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert together.routing == pytest.approx(one_batch.routing, abs=1e-6)


def test_the_validation_loader_takes_the_batched_size() -> None:
    from morsearch.train.proxy import prepare, validation_batch_size

    budget = steps_budget(batch_size=8, seq_len=32, val_batches=4)
    _, datamodule, _ = prepare(tiny_mor(), budget, DATA, torch.device("cpu"))
    assert datamodule.val_dataloader().batch_size == validation_batch_size(tiny_mor(), budget) == 32
