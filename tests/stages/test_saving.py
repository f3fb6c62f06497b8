"""Every training stage saves the model it tested (`--save-model`), and the saved model reproduces the test."""

from __future__ import annotations

import pytest

from plmtune import load
from plmtune.loading import load_recipe
from plmtune.run import run_recipe

from test_selftrain import _list_recipe, _toy_with_pool


def _recipe(name):
    if name == "list_cpu":
        return _list_recipe()
    return load_recipe(name, ["train.epochs=2", "train.lr=1e-3"])


@pytest.mark.parametrize("name", ["baseline", "adapters", "lora", "list_cpu", "self_distill"])
def test_every_training_stage_saves_the_model_it_tested(name, toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    task = _toy_with_pool(toy_task) if name == "list_cpu" else toy_task
    result = run_recipe(_recipe(name), task, tmp_path / "run", seed=2, save_model=True)
    assert result["model"]["path"] == str(tmp_path / "run" / "model")
    metrics = load(tmp_path / "run" / "model").evaluate(task)
    assert metrics["accuracy"] == result["test"]["accuracy"]
    assert metrics["loss"] == pytest.approx(result["test"]["loss"], abs=1e-5)


def test_self_distillation_resumed_after_its_last_round_trains_that_round_again_to_save_it(
        toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.assemble import Prepared

    tiny_backbone()
    recipe = _recipe("self_distill")
    whole = run_recipe(recipe, toy_task, tmp_path / "run", seed=2, save_model=True)
    (tmp_path / "run" / "result.json").unlink()  # killed after the last round, before result.json
    real_fit, calls = Prepared.fit, []

    def count(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(Prepared, "fit", count)
    again = run_recipe(recipe, toy_task, tmp_path / "run", seed=2, resume=True, save_model=True)
    assert len(calls) == 1 and again["test"] == whole["test"]  # the last round only, with the same result
    assert load(tmp_path / "run" / "model").evaluate(toy_task)["accuracy"] == whole["test"]["accuracy"]
