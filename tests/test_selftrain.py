"""LiST self-training, meta re-weighting and self-distillation: mechanics on a tiny BERT, then real data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from plmtune.loading import load_recipe
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.per_example import PerExampleGradients
from plmtune.run import run_recipe
from plmtune.reweight import meta_weights, meta_weights_by_virtual_step, meta_weights_from_graph, reweighted_loss


def _batch(n, flip=0, seed=0):
    """Class 1 rows start with token 3, class 0 with token 4; `flip` rows get the wrong label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    ids = torch.randint(10, 100, (n, 6), generator=g)
    ids[:, 0] = torch.where(labels == 1, 3, 4)
    given = labels.clone()
    given[:flip] = 1 - given[:flip]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": given}


def _trained_tiny_model():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(vocab_size=100, seed=0, dropout=0.0), num_labels=2, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = _batch(16, seed=100 + step)
        loss = F.cross_entropy(model(**batch)["logits"], batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _freeze_embeddings(model):
    """As the encoder is frozen in LiST: what trains is all Linear/LayerNorm (the one-backward route)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.weight.requires_grad_(False)
    return model


def test_meta_weights_are_a_distribution_that_drops_corrupted_pseudo_labels():
    model = _trained_tiny_model()
    pseudo = _batch(16, flip=6, seed=7)  # rows 0..5 carry the wrong label
    weights = meta_weights(model, pseudo, _batch(16, seed=8))
    assert (weights >= 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert weights[:6].mean() < 0.25 * weights[6:].mean(), weights


def test_meta_weights_equal_the_first_order_closed_form():
    # At eps = 0 the meta-gradient is -lr * <grad labelled loss, grad example loss>: check the torch.func result.
    model = _trained_tiny_model()
    pseudo, labelled = _batch(8, flip=3, seed=3), _batch(8, seed=4)
    params = [p for p in model.parameters() if p.requires_grad]
    g_l = torch.autograd.grad(F.cross_entropy(model(**labelled)["logits"], labelled["labels"]), params)
    per = F.cross_entropy(model(**pseudo)["logits"], pseudo["labels"], reduction="none")
    dots = torch.stack([sum((a * b).sum() for a, b in zip(g_l, torch.autograd.grad(per[i], params, retain_graph=True)))
                        for i in range(8)])
    expected = dots.clamp(min=0)
    expected = expected / expected.sum()
    assert torch.allclose(meta_weights(model, pseudo, labelled), expected, atol=1e-4)


def test_closed_form_equals_the_literal_virtual_step():
    model = _trained_tiny_model()
    pseudo, labelled = _batch(12, flip=4, seed=5), _batch(8, seed=6)
    reference = meta_weights_by_virtual_step(model, pseudo, labelled)
    assert torch.allclose(meta_weights(model, pseudo, labelled), reference, atol=1e-5)
    model.encoder.set_attn_implementation("eager")  # as PseudoLabelLoss sets it: fused SDPA has no double backward
    per_example = F.cross_entropy(model(**{k: v for k, v in pseudo.items() if k != "labels"})["logits"],
                                  pseudo["labels"], reduction="none")
    assert torch.allclose(meta_weights_from_graph(model, per_example, labelled), reference, atol=1e-5)
    per_example.sum().backward()  # the training step's own backward still works afterwards


def test_one_backward_reweighting_equals_the_literal_virtual_step_and_trains_with_its_weights():
    model = _freeze_embeddings(_trained_tiny_model())
    pseudo, labelled = _batch(12, flip=4, seed=5), _batch(8, seed=6)
    reference = meta_weights_by_virtual_step(model, pseudo, labelled)
    capture = PerExampleGradients(model)
    per_example = F.cross_entropy(model(**{k: v for k, v in pseudo.items() if k != "labels"})["logits"],
                                  pseudo["labels"], reduction="none")
    expected = torch.autograd.grad((reference * per_example).sum(),
                                   [p for p in model.parameters() if p.requires_grad], retain_graph=True)
    loss, weights = reweighted_loss(capture, model, per_example, labelled)
    assert torch.allclose(weights, reference, atol=1e-5)
    model.zero_grad(set_to_none=True)  # the pre-training loop left its last gradients
    assert weights[:4].sum() < weights[4:].sum()  # the flipped rows lose weight
    loss.backward()
    for p, e in zip([p for p in model.parameters() if p.requires_grad], expected):
        assert torch.allclose(p.grad, e, rtol=1e-3, atol=1e-6)


def test_pseudo_label_loss_routes_agree_and_leave_the_shared_encoder_as_found():
    # one_backward=None takes the per-example-capture route; False the reverse-over-reverse one.
    from plmtune.stages.self_training import PseudoLabelLoss
    from plmtune.technique import TrainContext

    config = load_recipe("list").stage("self_training")
    pseudo, labelled = _batch(12, flip=4, seed=5), _batch(8, seed=6)
    grads, losses = [], []
    for one_backward in (None, False):
        model = _freeze_embeddings(_trained_tiny_model())
        model.zero_grad(set_to_none=True)
        ctx = TrainContext(recipe=load_recipe("list"), seed=0, num_labels=2, model=model)
        hook = PseudoLabelLoss(config, warmup_steps=0, labelled_loader=[labelled], one_backward=one_backward)
        hook.on_fit_start(ctx)
        assert (hook._capture is not None) == (one_backward is None)
        per_example = F.cross_entropy(model(**{k: v for k, v in pseudo.items() if k != "labels"})["logits"],
                                      pseudo["labels"], reduction="none")
        loss = hook.adjust_loss(per_example.mean(), {"per_example_loss": per_example}, pseudo, ctx)
        loss.backward()
        hook.on_fit_end(ctx)
        assert all(not m._forward_hooks for m in model.modules())
        assert model.encoder.config._attn_implementation != "eager"
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def _toy_with_pool(toy_task, n=24):
    rows = [json.loads(line) for line in (toy_task / "train.jsonl").read_text().splitlines()]
    (toy_task / "unlabeled.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[:n]))
    return toy_task


def _list_recipe(*extra):
    return load_recipe("list_cpu", ["train.epochs=2", "train.lr=1e-2", "self_training.unlabeled_cap=16",
                                    "self_training.student_steps=4", "self_training.batch_size=8",
                                    "self_training.kd_warmup=0.5", "techniques.0.template='{text} It was {mask} .'",
                                    "techniques.0.label_words=[bad, good]", "techniques.1.size=8", *extra])


def test_self_training_shares_the_frozen_encoder_and_records_each_iteration(toy_task, tmp_path, tiny_backbone,
                                                                             monkeypatch):
    from plmtune.stages import self_training

    tiny_backbone()
    seen = {}
    original = self_training.prepare

    def keep(*args, **kwargs):
        prepared = original(*args, **kwargs)
        model = prepared.model
        seen["model"], seen["encoder"] = model, {k: v.clone() for k, v in model.encoder.state_dict().items()}
        return prepared

    monkeypatch.setattr(self_training, "prepare", keep)
    result = run_recipe(_list_recipe(), _toy_with_pool(toy_task), tmp_path / "run", seed=3)
    history = result["self_training"]["iterations"]
    assert [h["iteration"] for h in history] == [0, 1, 2]
    assert all(h["test"]["n"] == 16 for h in history) and sum(history[1]["pseudo_label_distribution"]) == 16
    assert history[1]["zero_weight_share"] is not None  # re-weighting ran after the warm-up
    after = seen["model"].encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in seen["encoder"].items() if "LayerNorm" not in k)
    assert result["self_training"]["memory"]["ratio_to_one_model"] <= 1.2
    stages = {json.loads(x).get("stage") for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"teacher", "student", "student_labelled"}
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test"] == result["test"]


def test_self_training_resumes_at_the_interrupted_iteration(toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.assemble import Prepared
    from plmtune.engine.checkpoint import load_tree
    from plmtune.stages.self_training import SelfTraining

    tiny_backbone()
    task, out = _toy_with_pool(toy_task), tmp_path / "run"
    real_predict, calls = SelfTraining.predict_probs, {"predict": 0, "fit": 0}

    def crash_in_iteration_two(*args, **kwargs):
        calls["predict"] += 1
        if calls["predict"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(SelfTraining, "predict_probs", staticmethod(crash_in_iteration_two))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_list_recipe(), task, out, seed=3)
    assert not (out / "result.json").exists()
    assert load_tree(out / "self_training" / "state.safetensors")["iteration"] == 1
    with (out / "metrics.jsonl").open("a") as log:  # records of the lost iteration, the last one torn by the kill
        log.write('{"type": "train", "iteration": 2, "step": 1, "loss": 0.5}\n{"type": "tra')

    real_fit = Prepared.fit

    def counting_fit(*args, **kwargs):
        calls["fit"] += 1
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(SelfTraining, "predict_probs", staticmethod(real_predict))
    monkeypatch.setattr(Prepared, "fit", counting_fit)
    result = run_recipe(_list_recipe(), task, out, seed=3, resume=True)
    assert calls["fit"] == 2  # iteration 2 only: its student and the labelled finish; no teacher again
    assert [h["iteration"] for h in result["self_training"]["iterations"]] == [0, 1, 2]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r.get("iteration") for r in records]
    assert iterations == sorted(iterations) and {"type": "train", "iteration": 2, "step": 1, "loss": 0.5} not in records


def test_self_distillation_trains_a_student_on_soft_labels(toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.stages.self_distillation import SoftTargetLoss

    tiny_backbone()
    used = []
    real = SoftTargetLoss.adjust_loss

    def spy(self, loss, outputs, batch, ctx):
        used.append(batch["soft_labels"].sum(-1))
        return real(self, loss, outputs, batch, ctx)

    monkeypatch.setattr(SoftTargetLoss, "adjust_loss", spy)
    recipe = load_recipe("self_distill", ["train.epochs=2", "train.lr=1e-3"])
    result = run_recipe(recipe, toy_task, tmp_path / "run", seed=1)
    assert [r["round"] for r in result["self_distillation"]["rounds"]] == [0, 1]
    assert used and all(torch.allclose(s, torch.ones_like(s)) for s in used)  # teacher probabilities per row


def test_self_distillation_resumes_at_the_interrupted_round_with_the_same_result(toy_task, tmp_path, tiny_backbone,
                                                                                 monkeypatch):
    from plmtune.assemble import Prepared

    tiny_backbone()
    recipe = load_recipe("self_distill", ["train.epochs=2", "train.lr=1e-3", "self_distillation.rounds=2"])
    whole = run_recipe(recipe, toy_task, tmp_path / "whole", seed=1)
    real_fit, calls = Prepared.fit, []

    def crash_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(Prepared, "fit", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, toy_task, tmp_path / "run", seed=1)
    assert not (tmp_path / "run" / "result.json").exists()
    calls.clear()
    result = run_recipe(recipe, toy_task, tmp_path / "run", seed=1, resume=True)
    assert len(calls) == 1  # round 2 only
    assert [r["round"] for r in result["self_distillation"]["rounds"]] == [0, 1, 2]
    assert result["test"] == whole["test"]
    rounds = [json.loads(x).get("round") for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == sorted(rounds) and rounds.count(2) == [
        json.loads(x).get("round") for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()].count(2)
    # Killed after the last round but before result.json: the resume trains nothing and writes the same record.
    (tmp_path / "run" / "result.json").unlink()
    calls.clear()
    again = run_recipe(recipe, toy_task, tmp_path / "run", seed=1, resume=True)
    assert calls == [] and again["test"] == whole["test"]
    assert again["parameters"] == whole["parameters"] and again["sizes"] == whole["sizes"]


@pytest.mark.slow
def test_list_on_real_sst2_keeps_the_encoder_frozen_and_memory_near_one_model(tmp_path):
    from shared_data import shared_dataset
    from plmtune.fewshot import make_fewshot
    from plmtune.run import run_recipe

    make_fewshot(shared_dataset("sst2"), tmp_path / "few", 8, [13])
    recipe = load_recipe("list_cpu", ["train.epochs=3", "self_training.iterations=1", "self_training.unlabeled_cap=64",
                                      "self_training.student_steps=8"])
    result = run_recipe(recipe, tmp_path / "few" / "8-13", tmp_path / "run", seed=13)
    st = result["self_training"]
    assert st["memory"]["ratio_to_one_model"] <= 1.2 and st["unlabeled_used"] == 64
    assert result["parameters"]["trainable"] < 0.05 * result["parameters"]["total"]
    assert 0.0 <= st["iterations"][1]["zero_weight_share"] <= 1.0  # re-weighting ran on the real model
