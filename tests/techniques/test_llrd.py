from __future__ import annotations

import pytest
import torch

from plmtune.loading import load_recipe
from plmtune.engine.optim import build_optimizer, linear_schedule
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques import build_techniques
from plmtune.techniques.llrd import layer_index


def test_layer_index_of_bert_names():
    assert layer_index("encoder.embeddings.word_embeddings.weight", 6) == 0
    assert layer_index("encoder.encoder.layer.0.attention.self.query.weight", 6) == 1
    assert layer_index("encoder.encoder.layer.5.output.dense.bias", 6) == 6
    assert layer_index("classifier.weight", 6) == 7


def _groups(decay, layers=3, top_layer_lr=None):
    extra = [f"techniques.0.top_layer_lr={top_layer_lr}"] if top_layer_lr else []
    recipe = load_recipe("llrd", [f"techniques.0.decay={decay}", "train.lr=1e-3", "train.weight_decay=0.05", *extra])
    model = SequenceClassifier(tiny_bert(num_layers=layers, vocab_size=50), num_labels=2)
    ctx = TrainContext(recipe=recipe, seed=0)
    opt = build_optimizer(model, build_techniques(recipe), ctx, recipe.train)
    names = {id(p): n for n, p in model.named_parameters()}
    return model, opt, names


def test_each_layer_gets_lr_times_decay_power():
    model, opt, names = _groups(0.5, layers=3)
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of["classifier.weight"] == pytest.approx(1e-3)
    assert lr_of["encoder.encoder.layer.2.output.dense.weight"] == pytest.approx(1e-3 * 0.5)
    assert lr_of["encoder.encoder.layer.0.output.dense.weight"] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of["encoder.embeddings.word_embeddings.weight"] == pytest.approx(1e-3 * 0.5 ** 4)
    assert len(lr_of) == len(list(model.parameters()))  # every parameter is in exactly one group


def test_weight_decay_split_is_kept():
    _, opt, names = _groups(0.9)
    for group in opt.param_groups:
        for p in group["params"]:
            expected = 0.0 if names[id(p)].endswith(("bias", "LayerNorm.weight")) else 0.05
            assert group["weight_decay"] == expected


def test_schedule_keeps_the_ratios_between_layers():
    _, opt, _ = _groups(0.5)
    sched = linear_schedule(opt, warmup_steps=2, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
        ratios = [g["lr"] / opt.param_groups[-1]["lr"] for g in opt.param_groups]
        assert ratios == pytest.approx([g["lr_scale"] / opt.param_groups[-1]["lr_scale"] for g in opt.param_groups])


def test_decay_one_equals_plain_lr():
    _, opt, _ = _groups(1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3] * len(opt.param_groups))


def test_lower_layers_move_less_after_training_steps():
    torch.manual_seed(0)
    model, opt, _ = _groups(0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 50, (4, 8))
    for _ in range(3):
        loss = model(input_ids=x, attention_mask=torch.ones_like(x))["logits"].sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    # Adam's step size is ~lr per element, so the movement follows each layer's LR.
    assert moved["encoder.encoder.layer.0.output.dense.weight"] < moved["encoder.encoder.layer.2.output.dense.weight"]
    assert moved["encoder.encoder.layer.2.output.dense.weight"] < moved["classifier.weight"]


@pytest.mark.parametrize(("top_layer_lr", "power_of_top"), [(None, 1), ("decayed", 1), ("full", 0)])
def test_exact_lr_of_every_group_under_each_convention(top_layer_lr, power_of_top):
    """decayed (the default, Zhang et al.'s code): top layer lr*xi. full (Sun et al.): top layer lr."""
    _, opt, _ = _groups(0.5, layers=3, top_layer_lr=top_layer_lr)
    lrs = {g["group_name"]: g["lr"] for g in opt.param_groups}
    scales = {g["group_name"]: g["lr_scale"] for g in opt.param_groups}
    expected = {"layer0": 0.5 ** (3 + power_of_top), "layer1": 0.5 ** (2 + power_of_top),
                "layer2": 0.5 ** (1 + power_of_top), "layer3": 0.5 ** power_of_top, "layer4": 1.0}
    for depth, scale in expected.items():
        for name in (depth, f"{depth}-no_decay"):
            assert lrs[name] == pytest.approx(1e-3 * scale, rel=1e-12), name
            assert scales[name] == pytest.approx(scale, rel=1e-12), name
    assert set(lrs) == {f"{d}{s}" for d in expected for s in ("", "-no_decay")}


def test_top_layer_lr_is_validated():
    from plmtune.loading import build_recipe
    from plmtune.errors import RecipeError

    with pytest.raises(RecipeError, match=r"llrd.top_layer_lr = 'ful' is not allowed.*Did you mean 'full'"):
        build_recipe({"techniques": [{"name": "llrd", "top_layer_lr": "ful"}]})
