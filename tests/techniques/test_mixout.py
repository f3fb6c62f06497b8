"""Mixout: its mathematics, its scope, and that a Mixout-trained model saves and loads back as itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmtune.loading import load_recipe
from plmtune.models import SequenceClassifier, load_backbone, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques.mixout import Mixout, MixoutConfig, mixout_weight


def _model(dropout=0.0, layers=3, seed=0):
    return SequenceClassifier(tiny_bert(num_layers=layers, hidden=64, vocab_size=500, seed=seed, dropout=dropout),
                              2, dropout=dropout)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (n, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,), generator=g)}


def _ctx(model):
    return TrainContext(recipe=load_recipe("baseline"), seed=0, model=model)


def test_mixout_is_unbiased_and_mixes_towards_pretrained():
    pretrained = torch.zeros(200, 200)
    weight = torch.ones(200, 200)
    torch.manual_seed(0)
    out = mixout_weight(weight, pretrained, p=0.3)
    # kept entries become W / (1 - p) = 1 / 0.7; replaced entries become W0 = 0
    assert torch.all((out == 0) | torch.isclose(out, torch.tensor(1 / 0.7)))
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)  # E[mixout(W)] = W
    # With W0 != 0: replaced entries are (W0 - p W0) / (1 - p) = W0, kept ones (W - p W0) / (1 - p).
    w0 = torch.full((300, 300), 2.0)
    out = mixout_weight(torch.full((300, 300), 5.0), w0, p=0.5)
    assert torch.all(torch.isclose(out, torch.tensor(2.0)) | torch.isclose(out, torch.tensor((5 - 1.0) / 0.5)))
    assert out.mean().item() == pytest.approx(5.0, rel=0.02)


def test_mixout_wraps_every_encoder_linear_keeps_names_and_is_the_plain_layer_in_eval():
    model = _model()
    names_before = list(model.state_dict())
    plain = _model()
    plain.eval()
    ctx = _ctx(model)
    Mixout(MixoutConfig(p=0.5)).prepare_model(model, ctx)
    assert ctx.extras["mixout_layers"] == 3 * 6  # q, k, v, attn out, intermediate, output per layer
    assert list(model.state_dict()) == names_before  # names and state dict unchanged
    model.train()
    batch = _batch()
    F.cross_entropy(model(**batch)["logits"], batch["labels"]).backward()
    q = model.encoder.encoder.layer[0].attention.self.query.weight
    assert q.grad is not None and q.grad.abs().sum() > 0
    with torch.no_grad():
        q.add_(0.1)  # a trained weight: W != W0
        plain.encoder.encoder.layer[0].attention.self.query.weight.add_(0.1)
    model.eval()
    a, b = model(**batch)["logits"], model(**batch)["logits"]
    assert torch.equal(a, b)
    assert torch.equal(a, plain(**batch)["logits"])  # in evaluation the layer uses W itself


def test_mixout_draws_towards_the_pretrained_weight_in_training():
    model = _model()
    layer = model.encoder.encoder.layer[0].intermediate.dense
    w0 = layer.weight.detach().clone()
    Mixout(MixoutConfig(p=0.4)).prepare_model(model, _ctx(model))
    with torch.no_grad():
        layer.weight.add_(1.0)
    x = torch.eye(64)
    layer.train()
    torch.manual_seed(3)
    out = layer(x) - layer.bias  # row i = (mixed W)[:, i]
    torch.manual_seed(3)
    expected = mixout_weight(layer.weight, w0, 0.4)
    assert torch.allclose(out, expected.T, atol=1e-6)


def test_a_mixout_trained_model_saved_with_save_model_loads_back_with_identical_logits(
        toy_task, tmp_path, tiny_backbone, monkeypatch):
    """Through `plmtune run --save-model`'s own path: run_finetune, then Prepared.save (plmtune.saved)."""
    from safetensors.torch import load_file

    from plmtune.assemble import Prepared
    from plmtune.run import run_finetune

    tiny_backbone()
    trained = []
    save = Prepared.save
    monkeypatch.setattr(Prepared, "save", lambda self, model, *a: (trained.append(model), save(self, model, *a))[1])
    recipe = load_recipe("mixout", ["train.max_steps=4", "train.epochs=1", "train.lr=1e-2", "techniques.0.p=0.5"])
    run_finetune(recipe, toy_task, tmp_path / "run", seed=1, save_model=True)
    (model,) = trained
    saved = tmp_path / "run" / "model"
    tokenizer, encoder = load_backbone(str(saved))
    reloaded = SequenceClassifier(encoder, 2, recipe.model.pooling, recipe.model.dropout)
    missing, unexpected = reloaded.load_state_dict(load_file(str(saved / "head.safetensors")), strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    # The trained encoder moved away from its starting point, so a re-initialised load would differ.
    start = tiny_bert(vocab_size=30522, seed=0).state_dict()
    assert not torch.equal(encoder.state_dict()["encoder.layer.0.attention.self.query.weight"],
                           start["encoder.layer.0.attention.self.query.weight"])
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[name]), name
    batch = tokenizer(["good great film", "bad awful meal"], return_tensors="pt", padding=True)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch)["logits"], reloaded(**batch)["logits"])
