from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from morsearch.config import DataConfig
from morsearch.data import MorDataModule, TrainBatches, load_tokens, validation_windows
from morsearch.errors import DataError

SMALL = DataConfig(builtin_tokens=20_000, val_fraction=0.1)


def module(cfg: DataConfig = SMALL, *, seed: int = 0, vocab_size: int = 128, batch_size: int = 4) -> MorDataModule:
    dm = MorDataModule(cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=16, seed=seed, val_batches=2)
    dm.setup()
    return dm


def test_split_is_fixed_by_data_seed_not_training_seed() -> None:
    a, b = module(seed=0), module(seed=1)
    torch.testing.assert_close(next(iter(a.val_dataloader())), next(iter(b.val_dataloader())))
    assert not torch.equal(next(iter(a.train_dataloader())), next(iter(b.train_dataloader())))
    data = load_tokens(SMALL)
    assert len(data.val) == 2_000 and data.num_train_tokens == 20_000
    other = load_tokens(SMALL.replace(seed=5))
    assert not np.array_equal(data.val, other.val)


def test_builtin_corpus_grows_with_the_run_and_keeps_its_validation_set() -> None:
    sized = DataConfig()  # builtin_tokens null: sized by the run
    small, large = load_tokens(sized, train_tokens=300_000), load_tokens(sized, train_tokens=3_000_000)
    assert small.num_train_tokens == 2**19 and large.num_train_tokens == 2**22
    np.testing.assert_array_equal(small.val, large.val)  # trials of any size are scored alike
    np.testing.assert_array_equal(small.train_parts[0], large.train_parts[0][: 2**19])
    assert load_tokens(sized, train_tokens=10).num_train_tokens == 2**18


def test_training_windows_never_touch_the_validation_span() -> None:
    data = load_tokens(SMALL)
    val_set = {bytes(data.val[i : i + 8]) for i in range(len(data.val) - 8)}
    stream = TrainBatches(data, batch_size=8, seq_len=16, seed=0)
    for batch in itertools.islice(stream, 20):
        for row in batch.numpy().astype(np.uint16):
            # a window lies inside one training part: never straddles or enters the held-out span
            assert any(
                np.array_equal(part[o : o + 17], row)
                for part in data.train_parts
                for o in np.flatnonzero(part[: len(part) - 16] == row[0])
            )
    assert val_set  # sanity: the span exists


def test_validation_windows_cover_the_span_in_order() -> None:
    data = load_tokens(SMALL)
    windows = validation_windows(data, seq_len=16, max_windows=1000)
    assert windows.shape == ((len(data.val) - 1) // 16, 17)
    np.testing.assert_array_equal(windows[1, 0].item(), data.val[16])
    assert module().num_val_tokens == 2 * 4 * 16


def test_batches_are_reproducible_and_resumable() -> None:
    first = list(itertools.islice(iter(module().train_dataloader()), 5))
    again = list(itertools.islice(iter(module().train_dataloader()), 5))
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x, y)
    resumed = module()
    resumed.load_state_dict({"batches_served": 3})
    assert torch.equal(next(iter(resumed.train_dataloader())), first[3])


def test_token_beyond_vocabulary_is_refused_before_training() -> None:
    with pytest.raises(DataError, match=r"token id \d+ in the \w+ split .* beyond the model's vocabulary of 64"):
        module(vocab_size=64)


def test_fewer_tokens_than_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("a short text " * 10, encoding="utf-8")
    cfg = DataConfig(source="text", path=str(path), val_fraction=0.2)
    with pytest.raises(DataError, match=r"tiny.txt: \d+ training tokens, fewer than one batch"):
        module(cfg, batch_size=8)


def test_token_file_source(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 1000, 50_000).astype(np.uint16).tofile(path)
    dm = module(DataConfig(source="tokens", path=str(path)), vocab_size=1000)
    assert next(iter(dm.train_dataloader())).max() < 1000
    with pytest.raises(DataError, match="train.bin: token id 99\\d"):
        module(DataConfig(source="tokens", path=str(path)), vocab_size=500)


def test_uint32_token_file_through_data_config(tmp_path: Path) -> None:
    """Ids above 65535 survive only when DataConfig.token_dtype says uint32 (as uint16 they split in two)."""
    path = tmp_path / "big_vocab.bin"
    ids = np.random.default_rng(0).integers(60_000, 70_000, 20_000).astype(np.uint32)
    ids.tofile(path)
    cfg = DataConfig(source="tokens", path=str(path), token_dtype="uint32", val_fraction=0.1)
    data = load_tokens(cfg)
    assert data.num_train_tokens + len(data.val) == len(ids)
    np.testing.assert_array_equal(np.concatenate([*data.train_parts[:1], data.val, *data.train_parts[1:]]), ids)
    batch = next(iter(module(cfg, vocab_size=70_000).train_dataloader()))
    assert batch.min() >= 60_000 and batch.max() < 70_000
    with pytest.raises(DataError, match=r"big_vocab.bin: token id 6\d{4} .* beyond the model's vocabulary of 65536"):
        module(cfg, vocab_size=65_536)
    as_uint16 = load_tokens(cfg.replace(token_dtype="uint16"))
    assert as_uint16.num_train_tokens + len(as_uint16.val) == 2 * len(ids)  # the wrong dtype reads other ids
