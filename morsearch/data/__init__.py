"""Training data: the built-in corpus, the user's files, tokenizers and the LightningDataModule."""

from morsearch.data.corpus import builtin_text
from morsearch.data.datamodule import MorDataModule, TokenData, TrainBatches, load_tokens, validation_windows
from morsearch.data.readers import open_tokens, read_jsonl, read_text
from morsearch.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, bpe_path

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "MorDataModule",
    "TokenData",
    "Tokenizer",
    "TrainBatches",
    "bpe_path",
    "builtin_text",
    "load_tokens",
    "open_tokens",
    "read_jsonl",
    "read_text",
    "validation_windows",
]
