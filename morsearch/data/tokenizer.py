"""Tokenizers: byte-level (256 ids, needs nothing) and BPE trained locally on the user's text.

A BPE tokenizer is trained once with the ``tokenizers`` library and saved beside
the data (``<file>.bpe<N>.json``, or ``.morsearch-bpe<N>.json`` inside a folder),
so every trial of a study, and every later study on the same data, reuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from morsearch.errors import DataError


class Tokenizer(Protocol):
    """Text to token ids and back."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: list[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE tokenizer (the ``tokenizers`` library) trained on the training text."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()  # type: ignore[attr-defined]

    def encode(self, text: str) -> np.ndarray:
        # encode line by line in a batch: one huge string is slow and memory hungry in tokenizers
        lines = text.splitlines(keepends=True)
        encodings = self._tokenizer.encode_batch(lines)  # type: ignore[attr-defined]
        ids = [i for encoding in encodings for i in encoding.ids]
        return np.asarray(ids, dtype=np.uint32 if self.vocab_size > 65536 else np.uint16)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self._tokenizer.decode([int(i) for i in ids])  # type: ignore[attr-defined]

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Train on ``text`` (deterministic for the same text and vocabulary size)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the library raises a bare Exception on a corrupt file
            raise DataError(f"{path}: cannot load the saved BPE tokenizer ({exc}); delete it to retrain") from None

    def save(self, path: Path) -> None:
        self._tokenizer.save(str(path))  # type: ignore[attr-defined]


def bpe_path(data_path: Path, vocab_size: int) -> Path:
    """Where the BPE tokenizer of ``data_path`` is saved."""
    if data_path.is_dir():
        return data_path / f".morsearch-bpe{vocab_size}.json"
    return data_path.with_name(f"{data_path.name}.bpe{vocab_size}.json")


def bpe_for(text: str, vocab_size: int, data_path: Path | None) -> BPETokenizer:
    """The saved tokenizer beside ``data_path`` if there is one, else a newly trained (and saved) one."""
    path = bpe_path(data_path, vocab_size) if data_path is not None else None
    if path is not None and path.is_file():
        return BPETokenizer.load(path)
    tokenizer = BPETokenizer.train(text, vocab_size)
    if path is not None:
        try:
            tokenizer.save(path)
        except OSError as exc:
            raise DataError(
                f"{path}: cannot save the trained BPE tokenizer beside the data ({exc.strerror}); "
                "make the folder writable or copy the data somewhere writable"
            ) from None
    return tokenizer
