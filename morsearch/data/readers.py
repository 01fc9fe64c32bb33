"""Readers of the user's data: text files or folders, JSON Lines, pre-tokenized token files.

Every problem is a ``DataError`` naming the file (and line or byte) and the fix,
raised while loading, before any training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morsearch.errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
# documents are joined with a blank line, so a model sees where one ends
DOCUMENT_SEPARATOR = "\n\n"


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check data.path (relative to {Path.cwd()})")
    return path


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 at byte {exc.start}; convert the file (iconv -t UTF-8) or remove it"
        ) from None


def text_files(path: str | Path) -> list[Path]:
    """The text files of a file or folder (recursively, sorted so the order is reproducible)."""
    path = _existing(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the folder holds no {'/'.join(TEXT_SUFFIXES)} files; add some or point at a file")
    return files


def read_text(path: str | Path) -> str:
    """All text of a file or folder of text files, documents separated by a blank line."""
    documents = []
    for file in text_files(path):
        raw = file.read_bytes()
        if not raw.strip():
            raise DataError(f"{file}: the file is empty; remove it or add text")
        documents.append(_decode(file, raw))
    return DOCUMENT_SEPARATOR.join(documents)


def read_jsonl(path: str | Path, text_field: str = "text") -> str:
    """The ``text_field`` of every record of a JSON Lines file, records separated by a blank line."""
    path = _existing(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; jsonl needs one .jsonl file (or use source: text for folders)")
    documents = []
    for number, line in enumerate(_decode(path, path.read_bytes()).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise DataError(f"{path}:{number}: no '{text_field}' field; set data.text_field to the key of the text")
        if not isinstance(record[text_field], str):
            raise DataError(f"{path}:{number}: '{text_field}' is {type(record[text_field]).__name__}, not a string")
        documents.append(record[text_field])
    if not "".join(documents).strip():
        raise DataError(f"{path}: the file holds no text; check data.text_field and the file")
    return DOCUMENT_SEPARATOR.join(documents)


def open_tokens(path: str | Path, dtype: str = "uint16") -> np.ndarray:
    """A memory-mapped pre-tokenized file: raw little-endian ids, as nanoGPT's ``train.bin``."""
    path = _existing(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; source tokens needs one binary token file")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the token file is empty")
    if size % itemsize:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {dtype} ids; check data.token_dtype (uint16 or uint32)"
        )
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
