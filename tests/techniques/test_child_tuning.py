from __future__ import annotations

import math

import pytest
import torch

from plmtune.loading import load_recipe
from plmtune.engine.optim import default_param_groups
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques.child_tuning import ChildTuning, ChildTuningConfig, fisher_information, top_fraction_masks


def _model(seed=0):
    return SequenceClassifier(tiny_bert(num_layers=2, hidden=64, vocab_size=500, seed=seed, dropout=0.0), 2, dropout=0.0)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (n, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,), generator=g)}


def _wrapped(cfg, model, inner="adamw", weight_decay=0.0, seed=0):
    ctx = TrainContext(recipe=load_recipe("baseline", ["train.grad_clip=0"]), seed=seed)
    groups = default_param_groups(model, 1e-3, weight_decay)
    base = torch.optim.AdamW(groups, lr=1e-3) if inner == "adamw" else torch.optim.SGD(groups, lr=0.1)
    technique = ChildTuning(cfg)
    return technique, technique.wrap_optimizer(base, model, ctx), ctx


def _loss(model, batch):
    return torch.nn.functional.cross_entropy(model(**batch)["logits"], batch["labels"])


def test_f_keeps_fraction_p_and_scales_survivors_by_one_over_p():
    model = _model()
    technique, opt, _ = _wrapped(ChildTuningConfig(mode="F", reserve_p=0.3), model)
    param = model.encoder.encoder.layer[0].intermediate.dense.weight  # 64 x 128 = 8192 entries
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    technique.masks_for_step()
    technique.mask_randomly(param)
    g = param.grad
    p_eff = technique.keep_levels / 256
    kept = (g != 0).float().mean().item()
    n = g.numel()
    assert abs(kept - p_eff) < 4 * math.sqrt(p_eff * (1 - p_eff) / n)  # binomial tolerance
    assert torch.all((g == 0) | torch.isclose(g, torch.tensor(1 / p_eff)))
    assert abs(p_eff - 0.3) <= 1 / 512


def test_f_masks_are_fresh_each_step_and_the_same_for_the_same_seed_and_step():
    def masks(seed, steps):
        model = _model()
        technique, _, _ = _wrapped(ChildTuningConfig(mode="F"), model, seed=seed)
        param = model.classifier.weight
        out = []
        for _ in range(steps):
            param.grad = torch.ones_like(param)
            technique.masks_for_step()
            technique.mask_randomly(param)
            out.append(param.grad.clone())
        return out

    a, b, c = masks(1, 2), masks(1, 2), masks(2, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same on every process
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])


def test_f_expected_gradient_is_unbiased():
    model = _model()
    technique, _, _ = _wrapped(ChildTuningConfig(mode="F", reserve_p=0.2), model)
    param = model.encoder.encoder.layer[1].output.dense.weight
    total = torch.zeros_like(param)
    for _ in range(200):
        param.grad = torch.full_like(param, 2.0)
        technique.masks_for_step()
        technique.mask_randomly(param)
        total += param.grad
    assert (total / 200).mean().item() == pytest.approx(2.0, rel=0.02)


def test_f_skips_untouched_embedding_rows_and_masks_used_ones():
    model = _model()
    technique, _, _ = _wrapped(ChildTuningConfig(mode="F", reserve_p=0.5), model)
    emb = model.encoder.embeddings.word_embeddings.weight
    emb.grad = torch.zeros_like(emb)
    emb.grad[[3, 7]] = 1.0
    technique.masks_for_step()
    technique.mask_randomly(emb)
    assert emb.grad[[0, 1, 2, 4]].abs().sum() == 0
    used = emb.grad[[3, 7]]
    assert 0 < (used != 0).sum() < used.numel()
    assert torch.all((used == 0) | (used == 2.0))


def test_top_fraction_masks_keep_exactly_the_top_entries():
    a, b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(2, 5))
    scores = {a: torch.arange(10.0), b: torch.arange(10.0, 20.0).view(2, 5)}
    masks = top_fraction_masks(scores, 0.25)  # round(0.25 * 20) = 5 -> scores 15..19
    assert masks[a].sum() == 0
    assert masks[b].flatten().tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    big = {torch.nn.Parameter(torch.zeros(1)): torch.rand(3_000_000)}  # far above quantile's limit
    (m,) = top_fraction_masks(big, 0.1).values()
    assert m.sum().item() == 300_000


def test_fisher_is_the_sum_of_squared_batch_gradients():
    model = _model()
    batches = [_batch(4, 1), _batch(4, 2)]
    fisher = fisher_information(model, batches, None, bf16=False)
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    param = dict(model.named_parameters())[name]
    expected = torch.zeros_like(param)
    for batch in batches:
        grad, = torch.autograd.grad(_loss(model, batch), param)
        expected += grad ** 2
    assert torch.allclose(fisher[param], expected, rtol=1e-5, atol=1e-12)
    assert all(".layer." in n for n, p in model.named_parameters() if p in fisher)
    per_example = fisher_information(model, batches, None, per_example=True)
    assert not torch.allclose(per_example[param], fisher[param])
    # bf16 autocast changes the values a little but not which entries matter most
    low = fisher_information(model, batches, None, bf16=True)[param].flatten()
    top = fisher[param].flatten().topk(100).indices
    assert len(set(top.tolist()) & set(low.topk(100).indices.tolist())) >= 80


@pytest.mark.parametrize("inner", ["adamw", "sgd"])
def test_d_masked_weights_stay_bit_identical_and_kept_ones_move(inner):
    model = _model()
    batches = [_batch(8, s) for s in range(3)]
    technique, opt, ctx = _wrapped(ChildTuningConfig(mode="D", reserve_p=0.2), model, inner=inner, weight_decay=0.1)
    ctx.model, ctx.train_loader = model, batches
    technique.on_fit_start(ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(5):
        opt.zero_grad()
        _loss(model, batches[step % 3]).backward()
        opt.step()
    masks = technique.fisher_masks
    assert masks
    for name, param in model.named_parameters():
        if id(param) not in masks:
            continue
        mask = masks[id(param)].bool()
        assert torch.equal(param.detach()[~mask], before[name][~mask]), name
    moved = sum((p.detach() != before[n])[masks[id(p)].bool()].sum().item()
                for n, p in model.named_parameters() if id(p) in masks)
    assert moved / sum(m.sum().item() for m in masks.values()) > 0.9
    kept = sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.2, abs=1e-4)
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])  # out of scope: trains


def test_d_mask_round_trips_through_state_dict():
    model = _model()
    technique, _, ctx = _wrapped(ChildTuningConfig(mode="D"), model)
    ctx.model, ctx.train_loader = model, [_batch()]
    technique.on_fit_start(ctx)
    state = technique.state_dict()
    restored, _, ctx2 = _wrapped(ChildTuningConfig(mode="D"), model)
    restored.load_state_dict(state)
    ctx2.model, ctx2.train_loader = model, []  # no data needed: the saved mask is used
    restored.on_fit_start(ctx2)
    for key, mask in technique.fisher_masks.items():
        assert torch.equal(mask, restored.fisher_masks[key])


def test_d_without_fisher_pass_fails_loudly():
    model = _model()
    technique, opt, _ = _wrapped(ChildTuningConfig(mode="D"), model)
    _loss(model, _batch()).backward()
    with pytest.raises(RuntimeError, match="Fisher pass has not run"):
        opt.step()


def test_f_without_decay_masked_never_decays_masked_entries_embeddings_included():
    """decay_masked: false spares every entry whose gradient was masked this step (embedding rows too)."""
    model = _model()
    technique, opt, _ = _wrapped(ChildTuningConfig(mode="F", reserve_p=0.5, decay_masked=False), model,
                                 inner="sgd", weight_decay=0.1)
    for group in opt.param_groups:
        group["lr"] = 0.1
    emb = model.encoder.embeddings.word_embeddings.weight
    dense = model.encoder.encoder.layer[0].intermediate.dense.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    emb.grad[[3, 7]] = 1.0  # only two tokens were in the batch
    dense.grad.fill_(1.0)
    opt.step()
    for param, name in ((emb, "encoder.embeddings.word_embeddings.weight"),
                        (dense, "encoder.encoder.layer.0.intermediate.dense.weight")):
        old = before[name]
        kept = param.grad != 0  # the survivors of this step's mask (their gradient was 1 before scaling)
        assert 0 < kept.sum() < kept.numel()
        assert torch.equal(param.detach()[~kept], old[~kept]), name  # masked: neither stepped nor decayed
        # kept: SGD step plus decoupled decay, w <- w(1 - lr*wd) - lr*g/p', with lr = 0.1 and wd = 0.1
        p_eff = technique.keep_levels / 256
        expected = old[kept] * (1 - 0.1 * 0.1) - 0.1 * (1 / p_eff)
        assert torch.allclose(param.detach()[kept], expected, atol=1e-6), name
    assert torch.equal(emb.detach()[[0, 1, 2, 4]], before["encoder.embeddings.word_embeddings.weight"][[0, 1, 2, 4]])


def test_f_with_decay_masked_decays_every_entry():
    model = _model()
    _, opt, _ = _wrapped(ChildTuningConfig(mode="F", reserve_p=0.5), model, inner="sgd", weight_decay=0.1)
    for group in opt.param_groups:
        group["lr"] = 0.1
    emb = model.encoder.embeddings.word_embeddings.weight
    old = emb.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # no gradient anywhere: only the inner optimiser's decay acts, on every entry
    assert torch.allclose(emb.detach(), old * (1 - 0.1 * 0.1))
