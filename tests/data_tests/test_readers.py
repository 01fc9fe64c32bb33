from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from morsearch.data import open_tokens, read_jsonl, read_text
from morsearch.errors import DataError


def test_text_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("first", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\xff")
    assert read_text(tmp_path / "b.txt") == "second"
    assert read_text(tmp_path) == "second\n\nfirst"  # sorted paths: b.txt < sub/a.md


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt: no such file"):
        read_text(tmp_path / "nope.txt")


def test_not_utf8_names_file_and_byte(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(DataError, match=r"bad.txt: not UTF-8 at byte 6"):
        read_text(bad)


def test_empty_file_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty.txt: the file is empty"):
        read_text(tmp_path)
    (tmp_path / "empty.txt").unlink()
    with pytest.raises(DataError, match="holds no"):
        read_text(tmp_path)


def test_jsonl_reads_field_and_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"body": "two", "text": "two"}) + "\n")
    assert read_jsonl(path) == "one\n\ntwo"
    path.write_text(json.dumps({"body": "three", "id": 3}) + "\n")
    assert read_jsonl(path, "body") == "three"
    path.write_text(json.dumps({"text": "one"}) + "\n{broken\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"content": "one"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: no 'text' field"):
        read_jsonl(path)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_file_is_memory_mapped(tmp_path: Path, dtype: str) -> None:
    ids = np.arange(1000, dtype=dtype)
    path = tmp_path / "train.bin"
    ids.tofile(path)
    tokens = open_tokens(path, dtype)
    assert isinstance(tokens, np.memmap)
    np.testing.assert_array_equal(tokens, ids)


def test_token_file_problems(tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="t.bin: the token file is empty"):
        open_tokens(path)
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="not a whole number of uint16 ids"):
        open_tokens(path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_jsonl_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty.jsonl: the file holds no text"):
        read_jsonl(path)


def test_jsonl_not_utf8_names_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    first = (json.dumps({"text": "ok"}) + "\n").encode()
    path.write_bytes(first + '{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=rf"latin1.jsonl: not UTF-8 at byte {len(first) + 13}"):
        read_jsonl(path)
