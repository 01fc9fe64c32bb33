from __future__ import annotations

import re

from morsearch.data import builtin_text
from morsearch.data.corpus import SEGMENTS


def test_same_seed_same_text_and_exact_length() -> None:
    assert builtin_text(20_000, 3) == builtin_text(20_000, 3)
    assert len(builtin_text(20_000, 3)) == 20_000
    assert builtin_text(20_000, 3) != builtin_text(20_000, 4)


def test_printable_ascii_so_byte_ids_stay_below_128() -> None:
    text = builtin_text(50_000, 0)
    assert max(map(ord, text)) < 128
    assert all(ch == "\n" or 32 <= ord(ch) < 127 for ch in text)


def test_every_segment_kind_appears() -> None:
    lines = builtin_text(50_000, 0).splitlines()
    kinds = {line.split(" ", 1)[0] for line in lines}
    assert {"sum", "brackets", "recall", "count"} <= kinds
    assert any(line.startswith("the ") for line in lines)  # prose
    assert set(SEGMENTS) == {"prose", "sum", "brackets", "recall", "count"}


def test_hard_spans_are_correct() -> None:
    """The computation spans must be right, or there is nothing to learn."""
    lines = builtin_text(100_000, 1).splitlines()[:-1]  # the last line may be cut
    pairs = {")": "(", "]": "[", "}": "{", ">": "<"}
    for line in lines:
        if m := re.fullmatch(r"sum (\d+)\+(\d+)=(\d+) \.", line):
            assert int(m[1]) + int(m[2]) == int(m[3])
        elif m := re.fullmatch(r"brackets (\S+) \.", line):
            stack: list[str] = []
            for ch in m[1]:
                if ch in pairs:
                    assert stack.pop() == pairs[ch]
                else:
                    stack.append(ch)
            assert not stack
        elif m := re.fullmatch(r"recall (.*) ; (\w)\?(\d\d) \.", line):
            values = dict(pair.split("=") for pair in m[1].split())
            assert values[m[2]] == m[3]
        elif m := re.fullmatch(r"count (\w+)=(\d+) \.", line):
            assert len(m[1]) == int(m[2])
