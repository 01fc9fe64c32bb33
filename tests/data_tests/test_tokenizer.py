from __future__ import annotations

from pathlib import Path

from morsearch.config import DataConfig
from morsearch.data import ByteTokenizer, bpe_path, builtin_text, load_tokens


def test_byte_round_trip() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids.max() < 256 and len(ids) == len("héllo".encode())
    assert tok.decode(ids) == "héllo"


def test_bpe_is_trained_saved_beside_the_data_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(builtin_text(60_000, 0), encoding="utf-8")
    cfg = DataConfig(source="text", path=str(path), tokenizer="bpe", bpe_vocab_size=400)
    data = load_tokens(cfg)
    saved = bpe_path(path, 400)
    assert saved.is_file()
    assert data.tokenizer is not None and data.tokenizer.vocab_size == 400
    total = data.num_train_tokens + len(data.val)
    assert total < 60_000 / 1.5  # merges compress the text
    text = "the quiet river follows a small garden ."
    assert data.tokenizer.decode(data.tokenizer.encode(text)) == text

    stamp = saved.stat().st_mtime_ns
    path.write_text(builtin_text(60_000, 0) + " more", encoding="utf-8")  # new data: reloaded, tokenizer reused
    again = load_tokens(cfg)
    assert saved.stat().st_mtime_ns == stamp
    assert again.num_train_tokens + len(again.val) > total
