"""The assembler: declared batch fields reach the batch (and only those); diagnostics reach result.json."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from plmtune.assemble import prepare
from plmtune.data import load_task
from plmtune.loading import load_recipe
from plmtune.run import run_recipe
from plmtune.technique import _REGISTRY, Technique, register


@dataclass(frozen=True)
class _WeightConfig:
    pass


class _RowWeight(Technique):
    """Adds a per-row `weight` (declared) and a `scratch` field (not declared) in prepare_data."""

    batch_fields = {"weight": "float64"}

    def prepare_data(self, splits, ctx):
        ctx.extras["rows_weighted"] = len(splits["train"])
        return {name: [{**row, "weight": 0.5, "scratch": 1.0} for row in rows] for name, rows in splits.items()}

    def report(self):
        return {"ran": True}


def _registered(monkeypatch):
    monkeypatch.setattr("plmtune.technique._REGISTRY", dict(_REGISTRY))  # leave the real registry as found
    register("row_weight", _WeightConfig)(_RowWeight)


def test_a_declared_batch_field_reaches_the_batch_and_nothing_else_does(toy_task, tiny_backbone, monkeypatch):
    tiny_backbone()
    _registered(monkeypatch)
    recipe = load_recipe("baseline", ["techniques=[row_weight]"])
    prepared = prepare(recipe, load_task(toy_task, recipe.data), seed=0)
    batch = next(iter(prepared.train_loader()))
    assert batch["weight"].dtype == torch.float64 and torch.all(batch["weight"] == 0.5)
    assert "scratch" not in batch


def test_a_techniques_diagnostics_go_into_result_json_under_its_name(toy_task, tmp_path, tiny_backbone, monkeypatch):
    tiny_backbone()
    _registered(monkeypatch)
    recipe = load_recipe("baseline", ["train.epochs=1", "techniques=[row_weight, noisytune]"])
    run_recipe(recipe, toy_task, tmp_path / "run", seed=0)
    techniques = json.loads((tmp_path / "run" / "result.json").read_text())["techniques"]
    assert techniques["row_weight"] == {"rows_weighted": 32, "ran": True}
    assert techniques["noisytune"]["noisytune_std"]  # what it wrote into ctx.extras while preparing
