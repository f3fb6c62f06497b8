"""Every registered technique, through the real loop: the contract each one must keep.

Parametrised over the registry itself, so registering a technique is enough to be tested here, and
over three tiny architectures (BERT, MPNet, RoBERTa: tests/contract/conftest.py). On MPNet and
RoBERTa each technique trains on 8 of the 32 training rows (one step an epoch, two epochs): what
they test is that the technique runs on the architecture, and the steps are kept few.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from plmtune.loading import build_recipe, load_recipe
from plmtune.techniques import list_techniques, registry
from plmtune.run import run_finetune

# Options a technique needs to run on the toy task (everything else stays at its defaults).
NEEDS = {"inject": {"field": "kg"},
         "prompt": {"template": "{text} It was {mask} .", "label_words": ["bad", "good"]}}


@pytest.fixture
def toy_with_features(toy_task, arch):
    for split in ("train", "dev", "test"):
        path = toy_task / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows = rows[:8] if split == "train" and arch != "bert" else rows
        path.write_text("".join(json.dumps({**r, "kg": [float(r["label"]), 1.0]}) + "\n" for r in rows))
    return toy_task


@pytest.mark.parametrize("name", list_techniques())
def test_defaults_validate_and_round_trip(name):
    cls = registry()[name]
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__
    assert module_doc and "Plug point" in module_doc, f"{name}: module docstring must name its plug points"
    recipe = build_recipe({"techniques": [{"name": name, **NEEDS.get(name, {})}]})
    (spec,) = recipe.techniques
    assert build_recipe({"techniques": [spec.to_dict()]}) == recipe
    assert dataclasses.is_dataclass(spec.config)
    assert cls.overridden_hooks(), f"{name} implements no hook"


@pytest.mark.parametrize("name", list_techniques())
def test_each_technique_trains_the_tiny_model_end_to_end(name, toy_with_features, tmp_path, tiny_backbone,
                                                        tiny_marian):
    tiny_backbone()
    options = dict(NEEDS.get(name, {}))
    if name == "back_translation":  # offline: tiny random translation models, a private cache
        options.update(forward=tiny_marian, backward=tiny_marian, max_length=12, cache_dir=str(tmp_path / "bt"))
    recipe = load_recipe("baseline", ["train.epochs=2", "train.lr=1e-3"])
    recipe = dataclasses.replace(recipe, techniques=build_recipe(
        {"techniques": [{"name": name, **options}]}).techniques)
    result = run_finetune(recipe, toy_with_features, tmp_path / "run", seed=1)
    assert result["steps"] == 2 * -(-result["sizes"]["train"] // 8)  # 2 epochs over the (maybe augmented) train split
    assert torch.isfinite(torch.tensor(result["test"]["accuracy"]))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r["type"] == "train")


def test_a_stack_of_techniques_composes_in_one_recipe(toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    recipe = load_recipe("baseline", ["train.epochs=8", "train.lr=5e-3", "model.pooling=concat_cls",
                                      "techniques=[{name: noisytune}, {name: llrd, decay: 0.8}, "
                                      "{name: child_tuning, mode: F}, {name: rdrop, alpha: 0.5}, {name: ema}]"])
    result = run_finetune(recipe, toy_task, tmp_path / "run", seed=2)
    assert [t["name"] for t in result["recipe"]["techniques"]] == ["noisytune", "llrd", "child_tuning", "rdrop", "ema"]
    assert result["steps"] == 32 and result["test"]["accuracy"] >= 0.9
