from __future__ import annotations

import pytest

from plmtune.config import RECIPES_DIR
from plmtune.loading import build_recipe, load_recipe
from plmtune.recipe_io import apply_override, recipe_to_yaml
from plmtune.errors import RecipeError


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_extends_merges_deeply_and_replaces_lists(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: llrd\nname: child\ntrain: {lr: 3.0e-5}\n")
    recipe = load_recipe(tmp_path / "child.yaml")
    base = load_recipe("baseline")
    assert recipe.train.lr == 3e-5
    assert recipe.train.epochs == base.train.epochs  # untouched keys come from the parent chain
    assert [t.name for t in recipe.techniques] == ["llrd"]


def test_overrides_set_delete_and_index():
    recipe = load_recipe("llrd", ["train.lr=1e-4", "techniques.0.decay=0.5", "model.pooling=mean"])
    assert recipe.train.lr == 1e-4 and recipe.model.pooling == "mean"
    assert recipe.techniques[0].config.decay == 0.5
    assert load_recipe("llrd", ["~techniques.0"]).techniques == ()


def test_override_needs_equals():
    with pytest.raises(RecipeError, match="key.sub=value"):
        apply_override({}, "train.lr")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trian": {}}, "Did you mean 'train'"),
        ({"train": {"batchsize": 1}}, "Did you mean 'batch_size'"),
        ({"train": {"lr": 5}}, r"train.lr = 5.0 is out of range; allowed: \(0, 1\]"),
        ({"train": {"batch_size": 0}}, r"allowed: \[1, 65536\]"),
        ({"train": {"epochs": "ten"}}, "must be an integer"),
        ({"train": {"bf16": "yes"}}, "must be true or false"),
        ({"model": {"pooling": "cls_mean"}}, "Did you mean"),
        ({"train": {"select_metric": "acc"}}, "Did you mean 'accuracy'"),
        ({"techniques": [{"name": "lrd"}]}, "unknown technique 'lrd'. Did you mean 'llrd'"),
        ({"techniques": [{"name": "llrd", "decay": 1.5}]}, r"llrd.decay = 1.5 is out of range"),
        ({"techniques": [{"name": "llrd", "decy": 0.5}]}, "Did you mean 'decay'"),
        ({"techniques": [{"name": "llrd"}, {"name": "llrd"}]}, "listed twice"),
        ({"techniques": [{"decay": 0.5}]}, "with a 'name' key"),
    ],
)
def test_bad_recipes_fail_with_a_clear_message(raw, message):
    with pytest.raises(RecipeError, match=message):
        build_recipe(raw)


def test_two_param_group_builders_are_rejected():
    from dataclasses import dataclass

    from plmtune.technique import _REGISTRY, Technique, register

    @dataclass(frozen=True)
    class OtherConfig:
        pass

    @register("other_groups", OtherConfig)
    class OtherGroups(Technique):
        def param_groups(self, model, ctx):
            return []

    try:
        with pytest.raises(RecipeError, match="only one of them"):
            build_recipe({"techniques": [{"name": "llrd"}, {"name": "other_groups"}]})
    finally:
        _REGISTRY.pop("other_groups")


def test_extends_loop_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="loop"):
        load_recipe(tmp_path / "a.yaml")


def test_unknown_recipe_name_suggests():
    with pytest.raises(RecipeError, match="Did you mean 'baseline'"):
        load_recipe("baseline2")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe("llrd", ["train.lr=2e-5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(("pair", "reason"), [
    (["mixout", "lora"], "LoRA replaces the same linear layers"),
    (["lora", "gradual_unfreeze"], "unfreeze LoRA's frozen base"),
    (["child_tuning", "gradual_unfreeze"], "Fisher pass"),
])
def test_incompatible_techniques_are_rejected_with_the_reason(pair, reason):
    with pytest.raises(RecipeError, match=reason):
        build_recipe({"techniques": [{"name": n} for n in pair]})
