"""EDA: easy data augmentation of the training split (Wei & Zou, EMNLP 2019).

Each training example gets `copies` augmented versions; each copy applies one of the four
operations, cycling SR → RI → RS → RD (as the reference spreads copies over the operations):
synonym replacement of n = max(1, α_sr·L) words, random insertion of n = max(1, α_ri·L) synonyms,
n = max(1, α_rs·L) random swaps, and random deletion with probability α_rd (L = words in the text).
An α of 0 leaves its operation out. Synonyms come from WordNet 3.0 read from Debian's
`wordnet-base` files — nothing is downloaded.

Only the train split is augmented, never dev or test. Augmented rows keep the label and carry
``source`` = the original's source plus ``#eda<j>`` and ``augmented_from`` = the original's
source, so each can be traced back. Pair tasks augment ``text`` only. The draws use a generator
seeded from the run seed.

Departures from the reference code: words are split on whitespace and punctuation-bearing tokens
are never replaced (the reference lower-cases and strips all non-letters first, which changes
the text even without augmentation); the stopword list is our own.

Plug point: ``prepare_data``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..augment import eda
from ..augment.wordnet import DEFAULT_DIR, load
from ..config import check_range
from ..technique import Technique, TrainContext, register

SEED_OFFSET = 31337


@dataclass(frozen=True)
class EDAConfig:
    """Args:
    copies: augmented copies per training example.
    alpha_sr / alpha_ri / alpha_rs / alpha_rd: strength of each operation (share of words).
    wordnet_dir: where WordNet's database files are.
    """

    copies: int = 4
    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    alpha_rd: float = 0.1
    wordnet_dir: str = DEFAULT_DIR

    def __post_init__(self) -> None:
        check_range("eda.copies", self.copies, 1, 64)
        for name in ("alpha_sr", "alpha_ri", "alpha_rs", "alpha_rd"):
            check_range(f"eda.{name}", getattr(self, name), 0.0, 0.9)
        if not any((self.alpha_sr, self.alpha_ri, self.alpha_rs, self.alpha_rd)):
            raise ValueError("eda: at least one alpha must be above 0")


def augment(text: str, cfg: EDAConfig, rng: random.Random, synonyms) -> list[str]:  # noqa: ANN001
    words = text.split()
    length = len(words)
    ops = []
    if cfg.alpha_sr:
        ops.append(lambda w: eda.synonym_replacement(w, max(1, int(cfg.alpha_sr * length)), rng, synonyms))
    if cfg.alpha_ri:
        ops.append(lambda w: eda.random_insertion(w, max(1, int(cfg.alpha_ri * length)), rng, synonyms))
    if cfg.alpha_rs:
        ops.append(lambda w: eda.random_swap(w, max(1, int(cfg.alpha_rs * length)), rng))
    if cfg.alpha_rd:
        ops.append(lambda w: eda.random_deletion(w, cfg.alpha_rd, rng))
    return [" ".join(ops[j % len(ops)](words)) for j in range(cfg.copies)]


@register("eda", EDAConfig)
class EDA(Technique):
    def prepare_data(self, splits: dict[str, list[dict]], ctx: TrainContext) -> dict[str, list[dict]]:
        wordnet = load(self.config.wordnet_dir)
        rng = random.Random(ctx.seed + SEED_OFFSET)
        augmented = []
        for row in splits["train"]:
            augmented.append(row)
            for j, text in enumerate(augment(row["text"], self.config, rng, wordnet.synonyms)):
                augmented.append({**row, "text": text, "source": f"{row['source']}#eda{j}",
                                  "augmented_from": row["source"]})
        ctx.extras["eda_added"] = len(augmented) - len(splits["train"])
        return {**splits, "train": augmented}
