"""Back-translation: batched round trips through two seq2seq models, a cache, train-only, traceable rows."""

from __future__ import annotations

import json

import pytest

from plmtune.augment.backtranslate import Translator
from plmtune.loading import load_recipe
from plmtune.errors import PlmtuneError
from plmtune.technique import TrainContext
from plmtune.techniques.back_translation import BackTranslation, BackTranslationConfig


def _splits():
    rows = [{"text": f"sentence number {i} is fine", "label": i % 2, "source": f"train.jsonl:{i + 1}"} for i in range(5)]
    return {"train": rows, "dev": [dict(rows[0], source="dev.jsonl:1")], "test": [dict(rows[1], source="test.jsonl:1")]}


def _technique(marian, tmp_path):
    return BackTranslation(BackTranslationConfig(forward=marian, backward=marian, max_length=12, batch_size=2,
                                                 cache_dir=str(tmp_path / "cache")))


def test_train_rows_get_a_traceable_paraphrase_and_dev_test_stay(tiny_marian, tmp_path):
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    out = _technique(tiny_marian, tmp_path).prepare_data(_splits(), ctx)
    originals, added = out["train"][:5], out["train"][5:]
    assert originals == _splits()["train"] and out["dev"] == _splits()["dev"] and out["test"] == _splits()["test"]
    assert len(added) == ctx.extras["back_translation_added"] > 0
    for row in added:
        source = row["augmented_from"]
        original = next(r for r in originals if r["source"] == source)
        assert row["source"] == source + "#bt" and row["label"] == original["label"] and row["text"] != original["text"]


def test_translations_are_cached_so_a_second_run_loads_no_model(tiny_marian, tmp_path, monkeypatch):
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    first = _technique(tiny_marian, tmp_path).prepare_data(_splits(), ctx)
    cache_files = list((tmp_path / "cache").glob("*.json"))
    assert len(cache_files) == 1  # both directions use the same tiny model here: one cache file
    assert len(json.loads(cache_files[0].read_text())) >= 5

    def no_model(self):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(Translator, "_load", no_model)
    assert _technique(tiny_marian, tmp_path).prepare_data(_splits(), ctx) == first


def test_a_missing_translation_model_is_a_clear_error(tmp_path):
    translator = Translator(str(tmp_path / "no-such-model"), tmp_path / "cache")
    with pytest.raises(PlmtuneError, match="Could not load translation model .*needs real translation models"):
        translator(["hello"])
