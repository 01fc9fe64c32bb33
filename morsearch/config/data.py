"""``DataConfig``: where training text comes from and how it becomes tokens.

``builtin`` needs no download: a corpus generated from ``seed`` (see docs/DATA.md).
The validation split depends only on the data and ``seed``, never on the model or
budget, so every trial of a study is scored on the same tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from morsearch.config.base import FrozenConfig
from morsearch.errors import ConfigError

DataSource = Literal["builtin", "text", "jsonl", "tokens"]
TokenizerName = Literal["byte", "bpe"]
TokenDtype = Literal["uint16", "uint32"]


class DataConfig(FrozenConfig):
    """Training and validation data of a study."""

    source: DataSource = Field(
        "builtin",
        description="builtin (generated, offline), text (.txt file or folder), jsonl (one JSON object "
        "per line with a text field) or tokens (pre-tokenized binary file, nanoGPT style).",
    )
    path: str | None = Field(None, description="File or folder of the data; required unless source is builtin.")
    text_field: str = Field("text", description="jsonl only: the key that holds each record's text.")
    token_dtype: TokenDtype = Field("uint16", description="tokens only: integer type of the token file.")
    tokenizer: TokenizerName = Field(
        "byte", description="byte (256 ids, needs nothing) or bpe (trained on the training text, saved beside it)."
    )
    bpe_vocab_size: int = Field(1024, ge=257, le=65536, description="bpe only: vocabulary size to train.")
    builtin_tokens: int | None = Field(
        None,
        ge=10_000,
        description="builtin only: size of the generated training text in bytes; null (default): sized by the "
        "run's token budget (a power of two from 256k to 16M), with a fixed 100k-token validation stream.",
    )
    val_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="Share of the tokens held out for validation (builtin: of builtin_tokens)."
    )
    val_tokens: int | None = Field(
        None, ge=1, description="Cap on validation tokens (overrides val_fraction when smaller)."
    )
    seed: int = Field(0, description="Seed of the generated corpus and of the train/validation split.")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source != "builtin" and not self.path:
            raise ConfigError(f"path: source '{self.source}' needs a path to the data file or folder")
        if self.source == "builtin" and self.path:
            raise ConfigError("path: the builtin corpus is generated; remove path or set source to text/jsonl/tokens")
        if self.source == "tokens" and self.tokenizer == "bpe":
            raise ConfigError(
                "tokenizer: a token file is already tokenized; set tokenizer: byte (ids are used as they are)"
            )
        return self
