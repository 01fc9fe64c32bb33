"""The built-in corpus: generated from a seed, offline, with tokens of mixed difficulty.

Adaptive depth only pays off when some next tokens need more computation than
others, so the corpus interleaves easy filler prose with spans whose next token
takes several steps to work out (docs/DATA.md explains the choice):

    prose     the quiet river follows a small garden near the old mill .
    sum       sum 4817+596=5413 .            (digits need the carry chain)
    brackets  brackets ([{<>}]){} .          (each closer needs a stack)
    recall    recall d=41 q=07 x=93 ; q?07 . (the value is copied from far back)
    count     count aaaaaaa=7 .              (the answer needs counting)

Only printable ASCII is produced, so the byte tokenizer maps it to ids < 128.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

_ADJECTIVES = "quiet small old bright green cold warm dark narrow broad gentle busy".split()
_NOUNS = "river garden mill road village forest bridge market field window stone harbour".split()
_VERBS = "follows crosses faces reaches passes circles joins shadows".split()
_PLACES = "near the old mill|by the long wall|under the grey sky|past the last house|beside the green hill".split("|")
_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _prose(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 3)):
        sentences.append(
            f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
            f"a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_PLACES)} ."
        )
    return " ".join(sentences)


def _sum(rng: random.Random) -> str:
    a = rng.randint(10, 10 ** rng.randint(2, 5))
    b = rng.randint(10, 10 ** rng.randint(2, 5))
    return f"sum {a}+{b}={a + b} ."


def _brackets(rng: random.Random) -> str:
    out, stack = [], []
    for _ in range(rng.randint(4, 16)):
        if stack and rng.random() < 0.45:
            out.append(_BRACKETS[stack.pop()])
        else:
            opener = rng.choice("([{<")
            stack.append(opener)
            out.append(opener)
    out.extend(_BRACKETS[opener] for opener in reversed(stack))
    return f"brackets {''.join(out)} ."


def _recall(rng: random.Random) -> str:
    keys = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(3, 6))
    values = {key: f"{rng.randint(0, 99):02d}" for key in keys}
    query = rng.choice(keys)
    pairs = " ".join(f"{key}={values[key]}" for key in keys)
    return f"recall {pairs} ; {query}?{values[query]} ."


def _count(rng: random.Random) -> str:
    n = rng.randint(1, 12)
    return f"count {rng.choice('abxyz') * n}={n} ."


# (generator, weight): about half the segments are easy prose, half need computation.
SEGMENTS: dict[str, tuple[Callable[[random.Random], str], float]] = {
    "prose": (_prose, 0.5),
    "sum": (_sum, 0.15),
    "brackets": (_brackets, 0.12),
    "recall": (_recall, 0.15),
    "count": (_count, 0.08),
}


@lru_cache(maxsize=4)
def builtin_text(num_chars: int, seed: int, stream: str = "train") -> str:
    """The built-in corpus: ``num_chars`` characters (one byte each), the same for the same seed.

    A shorter text is a prefix of a longer one of the same seed and stream, so a
    corpus can grow with the budget without changing what it starts with.

    Args:
        num_chars: Length of the text; the last segment is cut to fit.
        seed: Seed of the generator; different seeds give different, equally distributed corpora.
        stream: Independent streams of the same seed (training and validation text).

    Returns:
        Printable-ASCII text of segments separated by newlines.
    """
    rng = random.Random(f"{stream}:{seed}")  # str seeds are hashed with sha512: stable across runs
    makers = [maker for maker, _ in SEGMENTS.values()]
    weights = [weight for _, weight in SEGMENTS.values()]
    parts: list[str] = []
    length = 0
    while length < num_chars:
        # draw kinds in blocks: one weighted draw per segment is the slow part in pure Python
        for maker in rng.choices(makers, weights, k=256):
            segment = maker(rng) + "\n"
            parts.append(segment)
            length += len(segment)
    return "".join(parts)[:num_chars]
