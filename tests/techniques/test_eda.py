from __future__ import annotations

import random
from collections import Counter

import pytest

from plmtune.augment import eda as ops
from plmtune.augment.wordnet import load
from plmtune.loading import build_recipe, load_recipe
from plmtune.errors import PlmtuneError, RecipeError
from plmtune.technique import TrainContext
from plmtune.techniques.eda import EDA, EDAConfig

WORDS = "the quick brown fox jumps over the lazy dog near the old car".split()


@pytest.fixture(scope="module")
def wordnet():
    return load()


def test_wordnet_returns_real_synonyms(wordnet):
    assert {"automobile", "motorcar"} <= set(wordnet.synonyms("car"))
    assert "glad" in wordnet.synonyms("happy")
    assert "purchase" in wordnet.synonyms("buy")
    assert wordnet.synonyms("the") == () and wordnet.synonyms("xqzzy") == ()


def test_missing_wordnet_is_a_clear_error(tmp_path):
    with pytest.raises(PlmtuneError, match="install Debian's wordnet-base"):
        load(str(tmp_path))


def test_random_swap_keeps_the_multiset_and_changes_the_order():
    rng = random.Random(0)
    out = ops.random_swap(WORDS, 3, rng)
    assert Counter(out) == Counter(WORDS) and out != WORDS


def test_random_deletion_only_deletes_and_keeps_at_least_one():
    rng = random.Random(1)
    out = ops.random_deletion(WORDS, 0.5, rng)
    it = iter(WORDS)
    assert all(any(w == x for x in it) for w in out)  # a subsequence of the original
    assert 0 < len(out) < len(WORDS)
    assert len(ops.random_deletion(["one", "two"], 0.999999, random.Random(2))) == 1


def test_synonym_replacement_replaces_content_words_by_their_synonyms(wordnet):
    rng = random.Random(3)
    out = ops.synonym_replacement(WORDS, 3, rng, wordnet.synonyms)
    changed = [(a, b) for a, b in zip(WORDS, out) if a != b]
    assert len(changed) == 3 and len(out) == len(WORDS)
    for old, new in changed:
        assert old not in ops.STOPWORDS and new in wordnet.synonyms(old)


def test_random_insertion_adds_synonyms_of_words_in_the_sentence(wordnet):
    out = ops.random_insertion(WORDS, 2, random.Random(4), wordnet.synonyms)
    added = list((Counter(out) - Counter(WORDS)).elements())
    assert len(out) == len(WORDS) + 2 and len(added) == 2
    pool = {s for w in WORDS for s in wordnet.synonyms(w)}
    assert all(a in pool for a in added)


def _ctx(seed=0):
    return TrainContext(recipe=load_recipe("baseline"), seed=seed)


def _splits():
    rows = [{"text": "the film was a real delight", "label": 1, "source": "train.jsonl:1"},
            {"text": "a dull and tired story", "label": 0, "source": "train.jsonl:2", "text_pair": "x"}]
    return {"train": rows, "dev": [dict(rows[0], source="dev.jsonl:1")], "test": [dict(rows[1], source="test.jsonl:1")]}


def test_only_train_is_augmented_and_every_new_row_is_traceable():
    splits = _splits()
    out = EDA(EDAConfig(copies=3)).prepare_data(splits, _ctx())
    assert out["dev"] == splits["dev"] and out["test"] == splits["test"]
    assert len(out["train"]) == 2 * (1 + 3)
    added = [r for r in out["train"] if "augmented_from" in r]
    assert len(added) == 6
    for row in added:
        original = next(r for r in splits["train"] if r["source"] == row["augmented_from"])
        assert row["label"] == original["label"] and row["source"].startswith(original["source"] + "#eda")
        assert row.get("text_pair") == original.get("text_pair")


def test_augmentation_is_seeded():
    a = EDA(EDAConfig()).prepare_data(_splits(), _ctx(1))["train"]
    b = EDA(EDAConfig()).prepare_data(_splits(), _ctx(1))["train"]
    c = EDA(EDAConfig()).prepare_data(_splits(), _ctx(2))["train"]
    assert a == b and a != c


def test_bad_values_are_rejected():
    with pytest.raises(RecipeError, match=r"eda.alpha_rd = 1.5 is out of range"):
        build_recipe({"techniques": [{"name": "eda", "alpha_rd": 1.5}]})
    with pytest.raises(RecipeError, match="at least one alpha"):
        build_recipe({"techniques": [{"name": "eda", "alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "alpha_rd": 0}]})
