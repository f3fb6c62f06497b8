"""Hugging Face TrainingArguments names in a recipe's train section: renamed to plmtune's keys before validation."""

from __future__ import annotations

import pytest

from plmtune.cli import main
from plmtune.errors import RecipeError
from plmtune.loading import build_recipe, load_recipe
from plmtune.recipe_io import TRAIN_ALIASES, recipe_to_yaml

# One value per alias, away from TrainConfig's default, so that a value that went nowhere shows.
VALUES = {"learning_rate": 1e-5, "num_train_epochs": 3, "per_device_train_batch_size": 4,
          "per_device_eval_batch_size": 16, "gradient_accumulation_steps": 2, "max_grad_norm": 0.0,
          "metric_for_best_model": "macro_f1", "save_steps": 50}


def test_every_alias_has_a_test_value():
    assert set(VALUES) == set(TRAIN_ALIASES)


@pytest.mark.parametrize("alias", sorted(TRAIN_ALIASES))
def test_alias_sets_the_canonical_key(alias):
    recipe = build_recipe({"train": {alias: VALUES[alias]}})
    assert getattr(recipe.train, TRAIN_ALIASES[alias]) == VALUES[alias]


def test_recipe_file_with_hf_names_trains_with_them_and_shows_plmtune_names(tmp_path):
    path = tmp_path / "hf.yaml"
    path.write_text("extends: baseline\ntrain:\n  learning_rate: 2.0e-5\n  num_train_epochs: 3\n"
                    "  max_grad_norm: 0\n  weight_decay: 0.0\n")
    recipe = load_recipe(path)
    # the child's learning_rate replaces the parent's lr: no "both" error across files
    assert (recipe.train.lr, recipe.train.epochs, recipe.train.grad_clip) == (2e-5, 3, 0.0)
    shown = recipe_to_yaml(recipe)
    assert "lr: 2.0e-05" in shown and "epochs: 3" in shown
    assert not any(alias in shown for alias in TRAIN_ALIASES)


def test_set_takes_an_alias(capsys):
    assert load_recipe("baseline", ["train.learning_rate=1e-5"]).train.lr == 1e-5  # baseline sets lr itself
    assert load_recipe("baseline", ["~train.learning_rate"]).train.lr == 5e-5  # deletes lr: the default
    assert main(["show", "baseline", "--set", "train.per_device_train_batch_size=32"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 32" in out and "per_device" not in out


def test_build_recipe_leaves_the_callers_dict_alone():
    raw = {"train": {"learning_rate": 1e-5}}
    assert build_recipe(raw).train.lr == 1e-5
    assert raw == {"train": {"learning_rate": 1e-5}}


@pytest.mark.parametrize("train", [{"lr": 1e-4, "learning_rate": 1e-5}, {"learning_rate": 1e-5, "lr": 1e-4}])
def test_alias_and_canonical_key_together_is_an_error_naming_both(train):
    with pytest.raises(RecipeError, match=r"sets both 'learning_rate' .*and 'lr'"):
        build_recipe({"train": train})


def test_alias_and_canonical_key_in_one_file_exits_2_with_one_paragraph(tmp_path, capsys):
    path = tmp_path / "both.yaml"
    path.write_text("train:\n  max_grad_norm: 1.0\n  grad_clip: 0.5\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'max_grad_norm'" in err and "'grad_clip'" in err and str(path) in err


@pytest.mark.parametrize(("typo", "hint"), [("learning_rat", "Did you mean 'learning_rate' (the same as 'lr')?"),
                                            ("num_train_epoch", "Did you mean 'num_train_epochs'"),
                                            ("grad_clp", "Did you mean 'grad_clip'?")])
def test_typo_near_an_alias_or_a_key_gets_a_hint(typo, hint):
    with pytest.raises(RecipeError, match=rf"Unknown key 'train\.{typo}'") as err:
        build_recipe({"train": {typo: 1}})
    assert hint in str(err.value)


def test_aliases_belong_to_the_train_section_only():
    with pytest.raises(RecipeError, match=r"Unknown key 'model\.learning_rate'"):
        build_recipe({"model": {"learning_rate": 1e-5}})
