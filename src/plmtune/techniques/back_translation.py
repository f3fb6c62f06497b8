"""Back-translation augmentation (Sennrich et al. 2016; Xie et al. 2020 "UDA"): paraphrase the
training texts by a round trip through another language.

Each training row gets one paraphrase: ``text`` (and ``text_pair`` for pair tasks) through the
``forward`` model and back through the ``backward`` one — any pair of Hugging Face seq2seq
translation models, by hub name or local folder (e.g. Helsinki-NLP/opus-mt-en-de and
opus-mt-de-en). Decoding is batched and greedy by default (``beams`` > 1 for beam search);
results are cached on disk (``cache_dir``; see :mod:`plmtune.augment.backtranslate`), so repeated
runs do not translate again. A paraphrase identical to its source is dropped.

Only the train split is augmented, never dev or test. New rows keep the label and carry
``source`` = the original's source plus ``#bt`` and ``augmented_from`` = the original's source.
Real use needs real translation models (downloaded once with internet, or a local folder); the
offline tests use tiny randomly initialised Marian models, whose output is noise.

Plug point: ``prepare_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..augment.backtranslate import DEFAULT_CACHE, Translator, back_translate
from ..config import check_range
from ..technique import Technique, TrainContext, register


@dataclass(frozen=True)
class BackTranslationConfig:
    """Args:
    forward / backward: translation models (hub names or local folders), source→pivot and back.
    batch_size / max_length / beams: decoding.
    cache_dir: where translations are cached (default ~/.cache/plmtune/back_translation, or
        $PLMTUNE_CACHE/back_translation).
    """

    forward: str = "Helsinki-NLP/opus-mt-en-de"
    backward: str = "Helsinki-NLP/opus-mt-de-en"
    batch_size: int = 16
    max_length: int = 128
    beams: int = 1
    cache_dir: str = ""

    def __post_init__(self) -> None:
        check_range("back_translation.batch_size", self.batch_size, 1, 4096)
        check_range("back_translation.max_length", self.max_length, 4, 4096)
        check_range("back_translation.beams", self.beams, 1, 64)


@register("back_translation", BackTranslationConfig)
class BackTranslation(Technique):
    def prepare_data(self, splits: dict[str, list[dict]], ctx: TrainContext) -> dict[str, list[dict]]:
        cfg = self.config
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else DEFAULT_CACHE
        forward = Translator(cfg.forward, cache, cfg.batch_size, cfg.max_length, cfg.beams)
        backward = Translator(cfg.backward, cache, cfg.batch_size, cfg.max_length, cfg.beams)
        rows = splits["train"]
        fields = [f for f in ("text", "text_pair") if rows and f in rows[0]]
        paraphrased = {f: back_translate([r[f] for r in rows], forward, backward) for f in fields}
        augmented = list(rows)
        for i, row in enumerate(rows):
            new = {f: paraphrased[f][i] for f in fields}
            if all(new[f].strip() for f in fields) and any(new[f] != row[f] for f in fields):
                augmented.append({**row, **new, "source": f"{row['source']}#bt", "augmented_from": row["source"]})
        ctx.extras["back_translation_added"] = len(augmented) - len(rows)
        return {**splits, "train": augmented}
