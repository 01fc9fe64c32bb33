"""The built-in corpus: generated from a seed, offline, with tokens of mixed difficulty.

Adaptive depth only pays off when some next tokens need more computation than
others, so the corpus interleaves prose with spans whose next token
takes several steps to work out (docs/DATA.md explains the choice):

    prose     nune hule ka ze pi he vatufo . (a Zipfian lexicon with a bigram grammar)
    sum       sum 4817+596=5413 .            (digits need the carry chain)
    brackets  brackets ([{<>}]){} .          (each closer needs a stack)
    recall    recall d=41 q=07 x=93 ; q?07 . (the value is copied from far back)
    count     count aaaaaaa=7 .              (the answer needs counting)

The prose is a made-up language whose loss keeps falling with compute and capacity,
as natural text's does: its words follow Zipf's law and each word has its own
few likely successors, so a model learns the frequent words and pairs first and
the rare ones as long as it trains (a corpus that a small model masters ranks
every model alike, docs/DATA.md). Only printable ASCII is produced, so the byte
tokenizer maps it to ids < 128.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from functools import lru_cache

_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_CONSONANTS = "bdfghklmnprstvz"
_VOWELS = "aeiou"
LEXICON_WORDS = 16384  # words of the prose language
SUCCESSORS = 32  # likely next words of each word
ZIPF_EXPONENT = 1.0  # of word frequencies and of each word's successor choice


class Lexicon:
    """The prose language of one seed: words ranked by frequency and each word's successors.

    Shorter words are the more frequent ones (Zipf's law of abbreviation). The
    successors of a word are drawn from the word frequencies, and the next word is
    one of them with Zipf weights, so the bigram table to learn has
    ``LEXICON_WORDS x SUCCESSORS`` entries whose contexts are seen ever more rarely.
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"lexicon:{seed}")
        syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
        words: set[str] = set()
        while len(words) < LEXICON_WORDS:
            words.add("".join(rng.choices(syllables, k=rng.choice((1, 2, 2, 3, 3, 3)))))
        # sorted before the shuffle: a set's order follows the per-process string hash seed
        self.words = sorted(words)
        rng.shuffle(self.words)
        self.words.sort(key=len)
        zipf = [1.0 / rank**ZIPF_EXPONENT for rank in range(1, LEXICON_WORDS + 1)]
        self.word_weights = list(itertools.accumulate(zipf))
        self.successor_weights = list(itertools.accumulate(zipf[:SUCCESSORS]))
        self.successors = [
            rng.choices(range(LEXICON_WORDS), cum_weights=self.word_weights, k=SUCCESSORS) for _ in range(LEXICON_WORDS)
        ]

    def sentence(self, rng: random.Random) -> str:
        """4-16 words: the first by frequency, each next one among its predecessor's successors."""
        (word,) = rng.choices(range(LEXICON_WORDS), cum_weights=self.word_weights)
        picks = rng.choices(range(SUCCESSORS), cum_weights=self.successor_weights, k=rng.randint(3, 15))
        out = [word]
        for pick in picks:
            word = self.successors[word][pick]
            out.append(word)
        return " ".join(self.words[w] for w in out) + " ."


@lru_cache(maxsize=4)
def lexicon(seed: int) -> Lexicon:
    return Lexicon(seed)


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


# (generator, weight): about half the segments are prose, half need computation.
# The prose generator is the seed's lexicon's (set in builtin_text).
SEGMENTS: dict[str, tuple[Callable[[random.Random], str] | None, float]] = {
    "prose": (None, 0.5),
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
    prose = lexicon(seed).sentence
    makers = [maker or prose for maker, _ in SEGMENTS.values()]
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
