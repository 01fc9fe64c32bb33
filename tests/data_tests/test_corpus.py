from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

from morsearch.data import builtin_text
from morsearch.data.corpus import SEGMENTS, lexicon

PROSE = re.compile(r"[a-z]+( [a-z]+)* \.")


def test_same_seed_same_text_and_exact_length() -> None:
    assert builtin_text(20_000, 3) == builtin_text(20_000, 3)
    assert len(builtin_text(20_000, 3)) == 20_000
    assert builtin_text(20_000, 3) != builtin_text(20_000, 4)


def test_printable_ascii_so_byte_ids_stay_below_128() -> None:
    text = builtin_text(50_000, 0)
    assert max(map(ord, text)) < 128
    assert all(ch == "\n" or 32 <= ord(ch) < 127 for ch in text)


def test_same_text_in_every_process() -> None:
    """Workers are separate processes, each with its own string-hash seed: the corpus must not depend on it."""
    script = "from morsearch.data import builtin_text; print(builtin_text(30_000, 5)[-20_000:])"
    texts = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in (1, 2)
    }
    assert texts == {builtin_text(30_000, 5)[-20_000:] + "\n"}


def test_every_segment_kind_appears() -> None:
    lines = builtin_text(50_000, 0).splitlines()
    kinds = {line.split(" ", 1)[0] for line in lines}
    assert {"sum", "brackets", "recall", "count"} <= kinds
    assert sum(bool(PROSE.fullmatch(line)) for line in lines) > len(lines) / 3  # prose
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


def test_prose_follows_its_lexicon_with_zipfian_word_frequencies() -> None:
    """The prose's loss keeps falling with training because its bigram table is large and
    Zipfian: every word pair must be one of the lexicon's, and frequencies fall with rank."""
    lex = lexicon(2)
    index = {word: i for i, word in enumerate(lex.words)}
    counts: Counter[int] = Counter()
    for line in builtin_text(400_000, 2).splitlines()[:-1]:
        if PROSE.fullmatch(line):
            words = [index[word] for word in line[:-2].split()]
            counts.update(words)
            assert all(b in lex.successors[a] for a, b in zip(words, words[1:], strict=False))
    assert lex.words == lexicon(2).words and lex.words != lexicon(3).words  # the seed's, for both streams
    assert counts[0] > 20 * counts[99] > 0  # about 1/rank: word 0 some 100x word 99
    assert len(counts) > 1000  # and a long tail is seen
