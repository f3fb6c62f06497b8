"""Bottleneck adapters: identity at start, placements, freezing, and a frozen encoder stays bit-identical."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from plmtune.loading import build_recipe, load_recipe
from plmtune.errors import RecipeError
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques.adapters import Adapters, AdaptersConfig


def _with_adapters(places, train_layernorm=True, seed=0):
    model = SequenceClassifier(tiny_bert(vocab_size=100, seed=seed, dropout=0.0), num_labels=2, dropout=0.0)
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    return Adapters(AdaptersConfig(size=8, places=places, train_layernorm=train_layernorm)).prepare_model(model, ctx), ctx


@pytest.mark.parametrize("places", [["attention", "ffn"], ["embedding", "layer"], ["embedding", "attention", "ffn", "layer"]])
def test_adapters_start_as_the_identity(places):
    plain = SequenceClassifier(tiny_bert(vocab_size=100, seed=0, dropout=0.0), num_labels=2, dropout=0.0).eval()
    adapted, _ = _with_adapters(places)
    adapted.eval()
    inputs = {"input_ids": torch.randint(0, 100, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    assert torch.allclose(plain(**inputs)["logits"], adapted(**inputs)["logits"], atol=1e-5)
    expected = {"embedding": 1, "attention": 2, "ffn": 2, "layer": 2}  # the tiny BERT has 2 layers
    assert len(adapted.adapters) == sum(expected[p] for p in places)


def test_every_adapter_changes_the_output_once_trained():
    adapted, _ = _with_adapters(["embedding", "attention", "ffn", "layer"])
    adapted.eval()
    inputs = {"input_ids": torch.randint(0, 100, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    before = adapted(**inputs)["logits"].detach()
    for name, adapter in adapted.adapters.items():
        torch.nn.init.normal_(adapter.up.weight, std=0.5)
        after = adapted(**inputs)["logits"].detach()
        assert not torch.allclose(before, after), f"adapter {name} is not on the forward path"
        before = after


def test_only_adapters_head_and_layernorms_train():
    model, ctx = _with_adapters(["attention", "ffn"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("adapters.", "classifier.")) or "LayerNorm" in n for n in trainable)
    assert any("LayerNorm" in n for n in trainable) and any(n.startswith("adapters.") for n in trainable)
    assert "encoder.embeddings.word_embeddings.weight" in ctx.frozen
    model, _ = _with_adapters(["attention"], train_layernorm=False)
    assert not any("LayerNorm" in n for n, p in model.named_parameters() if p.requires_grad)


def test_config_is_checked():
    with pytest.raises(RecipeError, match="adapters.places"):
        build_recipe({"techniques": [{"name": "adapters", "places": ["everywhere"]}]})
    with pytest.raises(RecipeError, match="cannot be combined"):
        build_recipe({"techniques": [{"name": "adapters"}, {"name": "lora"}]})


@pytest.mark.parametrize("train_layernorm", [False, True])
def test_frozen_encoder_weights_are_bit_identical_after_training(toy_task, tmp_path, tiny_backbone, monkeypatch,
                                                                  train_layernorm):
    from plmtune import run as run_module
    from plmtune.stages import finetune

    tiny_backbone()
    built = {}
    original = finetune.prepare

    def keep(*args, **kwargs):
        prepared = original(*args, **kwargs)
        built["model"] = model = prepared.model
        built["before"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        return prepared

    monkeypatch.setattr(finetune, "prepare", keep)
    recipe = load_recipe("baseline", ["train.epochs=3", "train.lr=1e-2"])
    recipe = dataclasses.replace(recipe, techniques=build_recipe(
        {"techniques": [{"name": "adapters", "size": 8, "train_layernorm": train_layernorm}]}).techniques)
    result = run_module.run_finetune(recipe, toy_task, tmp_path / "run", seed=0)
    after = built["model"].encoder.state_dict()
    changed = {k for k, v in built["before"].items() if not torch.equal(v, after[k])}
    if train_layernorm:
        assert changed and all("LayerNorm" in k for k in changed)
    else:
        assert not changed
    assert result["parameters"]["trainable"] < 0.2 * result["parameters"]["total"]
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in built["model"].adapters.state_dict().items()
               if k.endswith("up.weight"))  # the adapters did train
