from __future__ import annotations

import json

import pytest

from plmtune.loading import load_recipe
from plmtune.errors import PlmtuneError
from plmtune.tune import search_space, tune


def test_search_space_covers_lr_and_each_techniques_knobs():
    space = search_space(load_recipe("stack"))
    assert space["train.lr"][:2] == (1e-5, 3e-4)
    assert space["techniques.0.lam"] == (0.0, 0.3)  # noisytune
    assert space["techniques.1.decay"] == (0.6, 1.0)  # llrd
    assert space["techniques.2.reserve_p"] == (0.1, 0.6)  # child_tuning


def test_tune_searches_on_dev_without_test_then_tests_once(toy_task, tmp_path, tiny_backbone):
    tiny_backbone(num_layers=1)
    recipe = load_recipe("noisytune", ["train.epochs=1"])
    summary = tune(recipe, toy_task, tmp_path / "t", budget_minutes=5, seed=0, max_trials=3)
    assert len(summary["trials"]) == 3
    for trial in summary["trials"]:
        assert 1e-5 <= trial["values"]["train.lr"] <= 3e-4 and 0 <= trial["values"]["techniques.0.lam"] <= 0.3
    for n in range(3):
        result = json.loads((tmp_path / "t" / "trials" / f"trial-{n}" / "result.json").read_text())
        assert result["test"] is None and "test" not in result["data_files"]  # trials never saw test
    final = json.loads((tmp_path / "t" / "final" / "result.json").read_text())
    assert final["test"]["n"] == 16
    assert final["recipe"]["techniques"][0]["lam"] == pytest.approx(summary["best_values"]["techniques.0.lam"])
    assert json.loads((tmp_path / "t" / "tune.json").read_text())["best_dev"] == summary["best_dev"]


def test_tune_needs_a_dev_split(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(PlmtuneError, match="needs a dev split"):
        tune(load_recipe("baseline"), tmp_path, tmp_path / "o", 1, 0)


def test_tune_refuses_a_stage_it_cannot_run_per_trial_by_name(toy_task, tmp_path):
    with pytest.raises(PlmtuneError, match="cannot tune a recipe with a pretrain stage"):
        tune(load_recipe("tapt"), toy_task, tmp_path / "t", budget_minutes=1, seed=0, max_trials=1)
    assert not (tmp_path / "t" / "trials").exists()


def test_tune_runs_the_recipes_stage_in_every_trial(toy_task, tmp_path, tiny_backbone):
    tiny_backbone(num_layers=1)
    recipe = load_recipe("self_distill", ["train.epochs=1"])
    tune(recipe, toy_task, tmp_path / "t", budget_minutes=5, seed=0, max_trials=1)
    trial = json.loads((tmp_path / "t" / "trials" / "trial-0" / "result.json").read_text())
    final = json.loads((tmp_path / "t" / "final" / "result.json").read_text())
    assert [r["round"] for r in trial["self_distillation"]["rounds"]] == [0, 1]  # not plain fine-tuning
    assert "self_distillation" in final
