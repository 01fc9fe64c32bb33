"""From a ``DataConfig`` to batches: load, tokenize, split, check, and the LightningDataModule.

The split depends only on the data and ``DataConfig.seed``, and validation reads
it in fixed consecutive windows, so every trial of a study (same data, same
budget shape) is scored on exactly the same tokens, whatever its model:

* the user's data: one contiguous span, at a seeded position, is held out;
* the builtin corpus: validation text is its own generated stream, and the
  training stream is sized by the run (``builtin_tokens: null``) or fixed.

Training windows of ``seq_len + 1`` tokens are drawn at random offsets from
the rest, from a generator seeded by the training seed, so the batch order is
reproducible too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from morsearch.config import DataConfig
from morsearch.data.corpus import builtin_text
from morsearch.data.readers import open_tokens, read_jsonl, read_text, text_files
from morsearch.data.tokenizer import ByteTokenizer, Tokenizer, bpe_for
from morsearch.errors import DataError


@dataclass(frozen=True)
class TokenData:
    """The tokens of a data source, split once into training parts and one validation span."""

    train_parts: tuple[np.ndarray, ...]  # 1-D id arrays (memory-mapped for token files)
    val: np.ndarray  # 1-D, the held-out span
    tokenizer: Tokenizer | None  # None for pre-tokenized files
    source: str  # what to name in error messages

    @property
    def num_train_tokens(self) -> int:
        return sum(len(part) for part in self.train_parts)

    @cached_property
    def _splits_max(self) -> list[tuple[str, np.ndarray, int]]:
        # one pass over a (possibly huge, memory-mapped) file per process, not one per trial
        splits = [("validation", self.val), *(("training", part) for part in self.train_parts)]
        return [(name, array, int(array.max())) for name, array in splits if len(array) > 0]

    def check(self, vocab_size: int, batch_size: int, seq_len: int) -> None:
        """Refuse data a model of ``vocab_size`` cannot train on with this batch shape."""
        for name, array, top in self._splits_max:
            if top >= vocab_size:
                position = int(np.argmax(array >= vocab_size))
                vocab = f" (tokenizer vocabulary {self.tokenizer.vocab_size})" if self.tokenizer else ""
                raise DataError(
                    f"{self.source}: token id {top} in the {name} split (first bad id at position {position}) is "
                    f"beyond the model's vocabulary of {vocab_size}{vocab}; set the model's vocab_size to at "
                    f"least {top + 1} or re-tokenize the data"
                )
        need = batch_size * (seq_len + 1)
        if self.num_train_tokens < need:
            raise DataError(
                f"{self.source}: {self.num_train_tokens} training tokens, fewer than one batch "
                f"({batch_size} x {seq_len + 1} = {need}); add data or lower batch_size/seq_len"
            )
        if len(self.val) < seq_len + 1:
            raise DataError(
                f"{self.source}: the validation split has {len(self.val)} tokens, fewer than one sequence of "
                f"{seq_len + 1}; raise data.val_fraction / data.val_tokens or add data"
            )


# builtin corpus sized by the run: training tokens rounded up to a power of two (so nearby
# budgets share one cached corpus), within these bounds; windows are drawn with replacement
BUILTIN_MIN_TOKENS, BUILTIN_MAX_TOKENS = 2**18, 2**24
BUILTIN_VAL_TOKENS = 100_000  # validation stream when the corpus is sized by the run
BUILTIN_UNSIZED_TOKENS = 2**21  # wall-clock budgets: the token count is not known in advance
BUILTIN_BPE_TRAINING_CHARS = 2**20  # a fixed prefix, so every trial gets the same tokenizer


def builtin_size(cfg: DataConfig, train_tokens: int | None) -> int:
    """Tokens of the builtin training stream: fixed by the config, else sized by the run."""
    if cfg.builtin_tokens is not None:
        return cfg.builtin_tokens
    if train_tokens is None:
        return BUILTIN_UNSIZED_TOKENS
    wanted = 1 << max(train_tokens - 1, 0).bit_length()
    return min(max(wanted, BUILTIN_MIN_TOKENS), BUILTIN_MAX_TOKENS)


def _builtin(cfg: DataConfig, size: int) -> TokenData:
    if cfg.val_tokens is not None:
        val_size = cfg.val_tokens
    elif cfg.builtin_tokens is not None:
        val_size = max(1, int(cfg.val_fraction * cfg.builtin_tokens))
    else:
        val_size = BUILTIN_VAL_TOKENS
    tokenizer: Tokenizer = ByteTokenizer()
    if cfg.tokenizer == "bpe":
        tokenizer = bpe_for(builtin_text(BUILTIN_BPE_TRAINING_CHARS, cfg.seed), cfg.bpe_vocab_size, None)
    train = tokenizer.encode(builtin_text(size, cfg.seed, "train"))
    val = tokenizer.encode(builtin_text(val_size, cfg.seed, "validation"))
    return TokenData(train_parts=(train,), val=val, tokenizer=tokenizer, source=f"builtin corpus (seed {cfg.seed})")


def _tokenize(cfg: DataConfig) -> tuple[np.ndarray, Tokenizer | None, str]:
    assert cfg.path is not None  # DataConfig requires it for every source but builtin
    if cfg.source == "tokens":
        return open_tokens(cfg.path, cfg.token_dtype), None, cfg.path
    path = Path(cfg.path)
    text = read_text(path) if cfg.source == "text" else read_jsonl(path, cfg.text_field)
    tokenizer: Tokenizer = ByteTokenizer() if cfg.tokenizer == "byte" else bpe_for(text, cfg.bpe_vocab_size, path)
    return tokenizer.encode(text), tokenizer, cfg.path


def _signature(cfg: DataConfig) -> tuple[tuple[str, int, int], ...]:
    """Sizes and modification times of the data files, so edited data is reloaded."""
    if cfg.source == "builtin" or cfg.path is None:
        return ()
    path = Path(cfg.path)
    files = text_files(path) if cfg.source == "text" else [path] if path.exists() else []
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def load_tokens(cfg: DataConfig, train_tokens: int | None = None) -> TokenData:
    """Read, tokenize and split the data of ``cfg`` (cached per process: a worker runs many trials).

    Args:
        cfg: The data source.
        train_tokens: Training tokens the run will consume; sizes the builtin corpus when
            ``cfg.builtin_tokens`` is None (ignored otherwise).
    """
    size = builtin_size(cfg, train_tokens) if cfg.source == "builtin" else 0
    return _load_tokens(cfg, _signature(cfg), size)


@lru_cache(maxsize=4)
def _load_tokens(cfg: DataConfig, signature: tuple[tuple[str, int, int], ...], builtin_tokens: int) -> TokenData:
    if cfg.source == "builtin":
        return _builtin(cfg, builtin_tokens)
    tokens, tokenizer, source = _tokenize(cfg)
    if len(tokens) < 2:
        raise DataError(f"{source}: only {len(tokens)} token(s); a language model needs a text to train on")
    num_val = max(1, int(len(tokens) * cfg.val_fraction))
    if cfg.val_tokens is not None:
        num_val = min(num_val, cfg.val_tokens)
    start = int(np.random.default_rng(cfg.seed).integers(0, len(tokens) - num_val + 1))
    parts = tuple(part for part in (tokens[:start], tokens[start + num_val :]) if len(part) > 0)
    return TokenData(train_parts=parts, val=tokens[start : start + num_val], tokenizer=tokenizer, source=source)


class TrainBatches(IterableDataset):
    """An endless stream of (batch_size, seq_len + 1) int64 windows at seeded random offsets."""

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int, start_batch: int = 0) -> None:
        super().__init__()
        self.start_batch = start_batch
        self.parts = [part for part in data.train_parts if len(part) > seq_len + 1]
        if not self.parts:
            raise DataError(f"{data.source}: no training stretch is longer than one sequence of {seq_len + 1}")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        # window starts of all parts laid end to end; a draw in [0, total) picks part and offset
        self.starts = np.cumsum([0] + [len(part) - seq_len - 1 for part in self.parts])

    def __iter__(self) -> Iterator[torch.Tensor]:
        width = self.seq_len + 1
        for number in itertools.count(self.start_batch):
            # one generator per batch number: resuming at batch N needs no replay of the first N
            draws = np.random.default_rng((self.seed, number)).integers(0, self.starts[-1], self.batch_size)
            which = np.searchsorted(self.starts, draws, side="right") - 1
            offsets = draws - self.starts[which]
            batch = np.stack([self.parts[p][o : o + width] for p, o in zip(which, offsets, strict=True)])
            yield torch.from_numpy(batch.astype(np.int64))


def validation_windows(data: TokenData, seq_len: int, max_windows: int) -> torch.Tensor:
    """The fixed validation set: consecutive (seq_len + 1)-token windows from the held-out span.

    Windows overlap by one token, so every held-out token after the first is a target once.
    """
    count = min(max_windows, (len(data.val) - 1) // seq_len)
    windows = [data.val[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)]
    return torch.from_numpy(np.stack(windows).astype(np.int64))  # (count, seq_len + 1)


class MorDataModule(pl.LightningDataModule):
    """Training batches and the fixed validation batches of one run.

    Args:
        cfg: Where the data comes from.
        vocab_size: The model's vocabulary; larger token ids are refused in ``setup``.
        batch_size: Sequences per batch (training and validation).
        seq_len: Tokens per sequence (inputs; each window holds one more for the targets).
        seed: Seed of the training batch order (the split uses ``cfg.seed``).
        val_batches: Validation batches per evaluation: the set is ``val_batches x batch_size``
            windows, the same whatever ``val_batch_size`` is.
        train_tokens: Training tokens the run will consume (sizes the builtin corpus).
        val_batch_size: Windows per validation forward (default ``batch_size``).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        vocab_size: int,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        val_batches: int = 8,
        train_tokens: int | None = None,
        val_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.vocab_size, self.train_tokens = cfg, vocab_size, train_tokens
        self.batch_size, self.seq_len, self.seed, self.val_batches = batch_size, seq_len, seed, val_batches
        self.val_batch_size = val_batch_size or batch_size
        self.data: TokenData | None = None
        self.val: torch.Tensor | None = None
        self.start_batch = 0  # set when resuming from a checkpoint

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = load_tokens(self.cfg, self.train_tokens)
        data.check(self.vocab_size, self.batch_size, self.seq_len)
        self.data = data
        self.val = validation_windows(data, self.seq_len, self.val_batches * self.batch_size)

    @property
    def num_val_tokens(self) -> int:
        """Target tokens scored at each validation."""
        self.setup()
        assert self.val is not None
        return self.val.shape[0] * self.seq_len

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.data is not None
        dataset = TrainBatches(self.data, self.batch_size, self.seq_len, self.seed, self.start_batch)
        return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=torch.cuda.is_available())

    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: where the batch stream stands (one batch per optimizer step)."""
        return {"batches_served": self.trainer.global_step if self.trainer is not None else self.start_batch}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.start_batch = int(state_dict["batches_served"])

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val is not None
        return DataLoader(self.val, batch_size=self.val_batch_size, shuffle=False, num_workers=0)
