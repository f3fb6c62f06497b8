"""R-Drop, re-init, EMA, gradual unfreezing and LoRA: each on its own mathematics (Mixout: test_mixout.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmtune.loading import build_recipe, load_recipe
from plmtune.engine.optim import default_param_groups
from plmtune.models import SequenceClassifier, count_parameters, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques.ema import EMA, EMAConfig
from plmtune.techniques.gradual_unfreeze import GradualUnfreeze, GradualUnfreezeConfig
from plmtune.techniques.lora import LoRA, LoRAConfig
from plmtune.techniques.rdrop import RDrop, RDropConfig, symmetric_kl
from plmtune.techniques.reinit import Reinit, ReinitConfig


def _model(dropout=0.1, layers=3, seed=0):
    return SequenceClassifier(tiny_bert(num_layers=layers, hidden=64, vocab_size=500, seed=seed, dropout=dropout),
                              2, dropout=dropout)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (n, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,), generator=g)}


def _ctx(model, overrides=()):
    return TrainContext(recipe=load_recipe("baseline", list(overrides)), seed=0, model=model)


# ---------------------------------------------------------------- R-Drop

def test_symmetric_kl_matches_the_definition():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl = lambda p, q: (p * (p / q).log()).sum(-1).mean()  # noqa: E731
    assert symmetric_kl(a, b).item() == pytest.approx(0.5 * (kl(pa, pb) + kl(pb, pa)).item(), rel=1e-5)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_rdrop_loss_is_mean_ce_plus_alpha_kl_and_vanishes_without_dropout():
    batch = _batch()
    model = _model(dropout=0.0)
    model.train()
    out = model(**batch)
    ce = F.cross_entropy(out["logits"], batch["labels"])
    loss = RDrop(RDropConfig(alpha=5.0)).adjust_loss(ce, out, batch, _ctx(model))
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5)  # identical passes: KL = 0
    model = _model(dropout=0.3)
    model.train()
    torch.manual_seed(0)
    out = model(**batch)
    ce = F.cross_entropy(out["logits"], batch["labels"])
    torch.manual_seed(1)
    with_alpha = RDrop(RDropConfig(alpha=5.0)).adjust_loss(ce, out, batch, _ctx(model))
    torch.manual_seed(1)
    second = model(**batch)["logits"]
    expected = 0.5 * (ce + F.cross_entropy(second, batch["labels"])) + 5.0 * symmetric_kl(out["logits"], second)
    assert with_alpha.item() == pytest.approx(expected.item(), rel=1e-5)
    assert symmetric_kl(out["logits"], second).item() > 0


def _two_passes(alpha, convention):
    """(R-Drop's loss, CE1, CE2, symmetric KL) for one batch through a model with dropout 0.3."""
    batch = _batch()
    model = _model(dropout=0.3)
    model.train()
    torch.manual_seed(0)
    first = model(**batch)
    ce1 = F.cross_entropy(first["logits"], batch["labels"])
    torch.manual_seed(1)
    loss = RDrop(RDropConfig(alpha=alpha, convention=convention)).adjust_loss(ce1, first, batch, _ctx(model))
    torch.manual_seed(1)
    second = model(**batch)["logits"]
    ce2 = F.cross_entropy(second, batch["labels"])
    return loss, ce1, ce2, symmetric_kl(first["logits"], second)


def test_rdrop_conventions_give_the_exact_losses():
    loss, ce1, ce2, kl = _two_passes(3.0, "plmtune")
    assert kl.item() > 0 and ce1.item() != pytest.approx(ce2.item())
    assert loss.item() == pytest.approx((0.5 * (ce1 + ce2) + 3.0 * kl).item(), rel=1e-6)
    paper, ce1, ce2, kl = _two_passes(3.0, "paper")  # Liang et al., Eq. 3: CE1 + CE2 + alpha * KL_sym
    assert paper.item() == pytest.approx((ce1 + ce2 + 3.0 * kl).item(), rel=1e-6)
    # plmtune's alpha is the paper's alpha / 2: the same loss up to the factor 2
    half, *_ = _two_passes(1.5, "plmtune")
    assert 2 * half.item() == pytest.approx(paper.item(), rel=1e-6)


def test_rdrop_default_is_plmtunes_convention_and_others_are_rejected():
    from plmtune.errors import RecipeError

    assert RDropConfig().convention == "plmtune"
    with pytest.raises(RecipeError, match=r"rdrop.convention = 'papers' is not allowed.*Did you mean 'paper'"):
        build_recipe({"techniques": [{"name": "rdrop", "convention": "papers"}]})


# ---------------------------------------------------------------- re-init

def test_reinit_resets_only_the_top_layers_with_bert_init():
    model = _model(layers=3)
    model.encoder.config.initializer_range = 0.05
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # make the current weights clearly not an init, so the reset is visible
        for p in model.parameters():
            p.add_(0.3)
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = _ctx(model)
    Reinit(ReinitConfig(layers=2)).prepare_model(model, ctx)
    params = dict(model.named_parameters())
    assert torch.equal(params["encoder.encoder.layer.0.output.dense.weight"],
                       moved["encoder.encoder.layer.0.output.dense.weight"])
    for i in (1, 2):
        w = params[f"encoder.encoder.layer.{i}.intermediate.dense.weight"]
        assert w.std().item() == pytest.approx(0.05, rel=0.1) and abs(w.mean().item()) < 0.01
        assert not params[f"encoder.encoder.layer.{i}.output.dense.bias"].any()
        assert torch.equal(params[f"encoder.encoder.layer.{i}.output.LayerNorm.weight"],
                           torch.ones_like(before[f"encoder.encoder.layer.{i}.output.LayerNorm.weight"]))
    assert ctx.extras["reinit_layers"] == [1, 2]
    with pytest.raises(ValueError, match="only 3 layers"):
        Reinit(ReinitConfig(layers=4)).prepare_model(model, ctx)


# ---------------------------------------------------------------- EMA

def test_ema_tracks_the_average_and_swaps_it_in_for_evaluation():
    model = torch.nn.Linear(2, 1)
    ctx = _ctx(model)
    ema = EMA(EMAConfig(decay=0.5, warmup=False))
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.on_fit_start(ctx)
    for value in (1.0, 2.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.on_step_end(ctx)
    # shadow: 0 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*2 = 1.25
    assert ema.shadow["weight"].flatten().tolist() == [1.25, 1.25]
    ema.on_evaluate_start(ctx)
    assert model.weight.flatten().tolist() == [1.25, 1.25]
    ema.on_evaluate_end(ctx)
    assert model.weight.flatten().tolist() == [2.0, 2.0]
    ema.on_fit_end(ctx)  # no dev split restored a best checkpoint: the final model is the shadow
    assert model.weight.flatten().tolist() == [1.25, 1.25]


def test_ema_warmup_lowers_the_decay_early():
    model = torch.nn.Linear(1, 1, bias=False)
    ctx = _ctx(model)
    ema = EMA(EMAConfig(decay=0.999))
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.on_fit_start(ctx)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.on_step_end(ctx)  # decay_1 = min(0.999, 2/11)
    assert ema.shadow["weight"].item() == pytest.approx(1 - 2 / 11)


# ---------------------------------------------------------------- gradual unfreezing

def test_gradual_unfreezing_opens_layers_from_the_top_and_frozen_weights_do_not_move():
    model = _model(dropout=0.0, layers=2)
    ctx = _ctx(model, ["train.weight_decay=0.1"])
    opt = torch.optim.AdamW(default_param_groups(model, 1e-2, 0.1), lr=1e-2)
    technique = GradualUnfreeze(GradualUnfreezeConfig(every_epochs=1))
    ctx.epoch = 0
    technique.on_fit_start(ctx)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    F.cross_entropy(model(**batch)["logits"], batch["labels"]).backward()
    opt.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name not in trainable), name
    technique.on_epoch_end(ctx)  # end of epoch 0: the top layer joins
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith("encoder.encoder.layer.0.") for n in trainable)
    ctx.epoch = 2
    technique.on_epoch_end(ctx)  # after 3 epochs: head, layer 1, layer 0, embeddings all train
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- LoRA

def test_lora_starts_as_the_base_model_trains_few_parameters_and_freezes_the_encoder():
    model = _model(dropout=0.0)
    model.eval()
    batch = _batch()
    reference = model(**batch)["logits"].detach()
    base = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    model = LoRA(LoRAConfig(r=4, dropout=0.0)).prepare_model(model, _ctx(model))
    model.eval()
    assert torch.allclose(model(**batch)["logits"], reference, atol=1e-6)  # B = 0 at init
    counts = count_parameters(model)
    # 3 layers x (query + value) x (A: 4x64 + B: 64x4) + classifier (64x2 + 2)
    assert counts["trainable"] == 3 * 2 * (4 * 64 + 64 * 4) + 64 * 2 + 2
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        F.cross_entropy(model(**batch)["logits"], batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
    for name, param in model.encoder.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[original]), name
    assert not torch.allclose(model(**batch)["logits"], reference)


@pytest.mark.parametrize(
    ("entry", "message"),
    [({"name": "rdrop", "alpha": -1}, "rdrop.alpha"), ({"name": "reinit", "layers": 0}, "reinit.layers"),
     ({"name": "ema", "decay": 1.0}, "ema.decay"), ({"name": "mixout", "p": 1.0}, "mixout.p"),
     ({"name": "gradual_unfreeze", "every_epochs": 0}, "every_epochs"), ({"name": "lora", "r": 0}, "lora.r")],
)
def test_out_of_range_values_are_rejected(entry, message):
    from plmtune.errors import RecipeError

    with pytest.raises(RecipeError, match=message):
        build_recipe({"techniques": [entry]})
