"""Recipe loading: stage sections come from the stage registry; optional dependencies are checked."""

from __future__ import annotations

import importlib.util

import pytest

from plmtune.cli import main
from plmtune.errors import RecipeError
from plmtune.loading import check_requirements, load_recipe, top_keys
from plmtune.stages import registry as stages


def test_every_registered_stage_with_a_config_is_a_recipe_key():
    keyed = {name for name, stage in stages().items() if stage.config_class is not None}
    assert keyed == {"pretrain", "self_training", "self_distillation", "embedding_head", "distillation"}
    assert keyed <= set(top_keys())
    with pytest.raises(RecipeError, match="Unknown top-level key 'self_trainin'.*Did you mean 'self_training'"):
        load_recipe("baseline", ["self_trainin.iterations=2"])


def test_a_recipe_runs_at_most_one_training_stage_but_may_pretrain_first():
    with pytest.raises(RecipeError, match="at most one stage"):
        load_recipe("self_distill", ["self_training.iterations=2"])
    recipe = load_recipe("tapt", ["self_distillation.rounds=1"])
    assert [s.name for s in recipe.stages] == ["self_distillation", "pretrain"]


def test_a_range_error_names_the_value_by_its_path():
    with pytest.raises(RecipeError, match=r"self_training.kd_warmup = 2.0 is out of range; allowed: \[0, 1\]"):
        load_recipe("list", ["self_training.kd_warmup=2.0"])
    with pytest.raises(RecipeError, match=r"pretrain.lr = 0.0 is out of range; allowed: \(0, 1\]"):
        load_recipe("tapt", ["pretrain.lr=0.0"])  # the knob training declares, shared


def test_a_techniques_missing_dependency_is_one_clear_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(RecipeError, match=r"technique 'lora' needs the Python package 'peft'.*pip install peft"):
        check_requirements(load_recipe("lora"))
    check_requirements(load_recipe("llrd"))  # nothing optional
    assert main(["validate", "lora", "llrd"]) == 2
    err = capsys.readouterr()
    assert "lora: INVALID: techniques[0]: technique 'lora' needs the Python package 'peft'" in err.err
    assert "llrd: ok" in err.out
