"""Back-translation with any pair of Hugging Face seq2seq translation models, batched and cached.

A text goes through the forward model (e.g. Helsinki-NLP/opus-mt-en-de) and back through the
backward one (opus-mt-de-en); the round trip paraphrases it. Each direction's outputs are cached
in a JSON file per (model, generation settings) under the cache folder, keyed by the input text,
so a second run — another seed, another recipe on the same data — translates nothing again.
The cache is written atomically after each direction.

Real use needs real translation models (a name on the Hub, downloaded once with internet, or a
local folder). Tests check the mechanics offline with tiny randomly initialised Marian models
built from a config, whose "translations" are noise.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("PLMTUNE_CACHE", Path.home() / ".cache" / "plmtune")) / "back_translation"


class Translator:
    """One direction: a seq2seq model, greedy or beam decoding, with an on-disk cache."""

    def __init__(self, model: str, cache_dir: Path, batch_size: int = 16, max_length: int = 128, beams: int = 1):
        self.name, self.batch_size, self.max_length, self.beams = model, batch_size, max_length, beams
        key = hashlib.sha256(json.dumps([str(model), max_length, beams]).encode()).hexdigest()[:16]
        self.cache_file = Path(cache_dir) / f"{Path(str(model)).name}-{key}.json"
        self.cache: dict[str, str] = json.loads(self.cache_file.read_text()) if self.cache_file.is_file() else {}
        self._model: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            from ..errors import PlmtuneError

            local = Path(str(self.name)).is_dir()
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.name, local_files_only=local)
                model = AutoModelForSeq2SeqLM.from_pretrained(self.name, local_files_only=local)
            except (OSError, ValueError) as err:
                raise PlmtuneError(f"Could not load translation model '{self.name}' (back-translation needs real "
                                   f"translation models: a local folder, or a hub name with internet once): "
                                   f"{' '.join(str(err).split())}") from err
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._model = (tokenizer, model.to(device).eval())
        return self._model

    def __call__(self, texts: list[str]) -> list[str]:
        import torch

        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            tokenizer, model = self._load()
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                  max_length=self.max_length, return_token_type_ids=False).to(model.device)
                with torch.inference_mode():
                    out = model.generate(**batch, max_new_tokens=self.max_length, num_beams=self.beams,
                                         do_sample=False)
                self.cache.update(zip(chunk, tokenizer.batch_decode(out, skip_special_tokens=True)))
            self._save()
        return [self.cache[t] for t in texts]

    def _save(self) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Merge with what is on disk: another translator (the other direction with the same model,
        # a parallel run) may have written entries since this one read the file.
        if self.cache_file.is_file():
            self.cache = {**json.loads(self.cache_file.read_text(encoding="utf-8")), **self.cache}
        tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.cache, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.cache_file)


def back_translate(texts: list[str], forward: Translator, backward: Translator) -> list[str]:
    return backward(forward(texts))
