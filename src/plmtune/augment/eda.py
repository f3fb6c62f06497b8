"""EDA operations (Wei & Zou, EMNLP 2019): synonym replacement, random insertion, random swap,
random deletion. Each takes a list of words and a `random.Random`, and returns a new list."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# Function words are never replaced or used as insertion anchors: their synonyms are noise.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
""".split())
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")

Synonyms = Callable[[str], tuple[str, ...]]


def _candidates(words: list[str], synonyms: Synonyms) -> list[int]:
    return [i for i, w in enumerate(words) if _WORD.match(w) and w.lower() not in STOPWORDS and synonyms(w)]


def synonym_replacement(words: list[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """Replace up to `n` distinct non-stopwords that have synonyms by a random synonym each."""
    out = list(words)
    positions = _candidates(words, synonyms)
    rng.shuffle(positions)
    for i in positions[:n]:
        out[i] = rng.choice(synonyms(words[i]))
    return out


def random_insertion(words: list[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """Insert, `n` times, a synonym of a random non-stopword at a random position."""
    out = list(words)
    for _ in range(n):
        positions = _candidates(out, synonyms)
        if not positions:
            break
        out.insert(rng.randint(0, len(out)), rng.choice(synonyms(out[rng.choice(positions)])))
    return out


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap two random positions, `n` times (the multiset of words is unchanged)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability `p`, keeping at least one word."""
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]
