from __future__ import annotations

import pytest
import torch

from plmtune.config import TrainConfig
from plmtune.loading import load_recipe
from plmtune.engine.optim import build_optimizer, default_param_groups, linear_schedule
from plmtune.technique import TrainContext


def test_default_groups_skip_decay_on_bias_and_layernorm(tiny_model):
    groups = default_param_groups(tiny_model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    undecayed = [names[id(p)] for p in groups[1]["params"]]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decayed)
    assert all(n.endswith("bias") or n.endswith("LayerNorm.weight") for n in undecayed)
    assert len(decayed) + len(undecayed) == len(list(tiny_model.parameters()))


def test_frozen_parameters_are_left_out(tiny_model):
    for p in tiny_model.encoder.parameters():
        p.requires_grad_(False)
    groups = default_param_groups(tiny_model, 1e-3, 0.0)
    assert sum(len(g["params"]) for g in groups) == 2  # classifier weight and bias


def test_no_trainable_parameters_is_an_error(tiny_model):
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(tiny_model, [], ctx, TrainConfig())


def test_schedule_warms_up_then_decays_linearly_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": 1.0}], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_fused_adamw_is_used_where_available(tiny_model):
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    opt = build_optimizer(tiny_model, [], ctx, TrainConfig(fused=True))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True
    assert build_optimizer(tiny_model, [], ctx, TrainConfig(fused=False)).defaults["fused"] in (None, False)
