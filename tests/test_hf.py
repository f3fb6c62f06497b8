"""The Hugging Face Trainer bridge, on a tiny BertForSequenceClassification built from a config."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from plmtune.errors import PlmtuneError
from plmtune.hf import STATE_FILE, TechniqueCallback, TechniqueTrainer, prepare
from plmtune.techniques.child_tuning import MaskedOptimizer
from plmtune.techniques.rdrop import symmetric_kl


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.ids = torch.randint(5, 100, (n, 8), generator=g)
        self.ids[:, 1] = 50 + self.labels  # a learnable cue

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _model(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def _args(tmp_path, **overrides):
    settings = {"output_dir": str(tmp_path), "save_strategy": "no", "report_to": [], "use_cpu": True,
                "disable_tqdm": True, "seed": 0, "per_device_train_batch_size": 8, "learning_rate": 1e-3}
    return TrainingArguments(**{**settings, **overrides})


def _batch(n=8):
    rows = Rows()
    return {k: torch.stack([rows[i][k] for i in range(n)]) for k in ("input_ids", "attention_mask", "labels")}


class Recorder(TrainerCallback):
    """Records what the optimiser is about to use at every step (set .trainer after building the trainer)."""

    def __init__(self):
        self.trainer, self.lrs, self.grads = None, [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.lrs.append({g["group_name"]: g["lr"] for g in self.trainer.optimizer.param_groups})
        self.grads.append(model.classifier.weight.grad.detach().clone())


# --------------------------------------------------------------------------- the one-call constructor


@pytest.mark.parametrize("batch,accum", [(4, 1), (2, 4)])
def test_the_schedule_spans_the_trainers_own_optimiser_steps(tmp_path, batch, accum):
    recorder = Recorder()
    args = _args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, num_train_epochs=2,
                 warmup_steps=0.25)
    trainer = TechniqueTrainer(model=_model(), args=args, train_dataset=Rows(32), callbacks=[recorder],
                               techniques=[{"name": "llrd", "decay": 0.5}])
    recorder.trainer = trainer
    trainer.train()
    steps = 2 * math.ceil(32 / (batch * accum))  # epochs x optimiser steps per epoch, on one process
    assert trainer.state.global_step == len(recorder.lrs) == steps
    warmup = args.get_warmup_steps(steps)
    assert warmup == math.ceil(0.25 * steps) >= 1
    # plmtune's linear schedule over exactly `steps`: warm-up to the peak at step `warmup`, then down to 0
    expected = [(s + 1) / (warmup + 1) if s < warmup else (steps - s) / (steps - warmup) for s in range(steps)]
    top = [lrs["layer3"] for lrs in recorder.lrs]
    assert top == pytest.approx([1e-3 * m for m in expected], rel=1e-6)
    assert top[warmup] == pytest.approx(1e-3) and top[warmup - 1] < 1e-3 and top[-1] > 0
    assert all(lr == 0.0 for lr in trainer.lr_scheduler.get_last_lr())  # 0 once the last step is taken
    for lrs in recorder.lrs:  # LLRD's per-group ratios hold at every step
        assert lrs["layer1"] == pytest.approx(0.25 * lrs["layer3"]) and lrs["layer0"] == pytest.approx(0.125 * lrs["layer3"])


def test_another_transformers_schedule_is_honoured_with_llrd_ratios(tmp_path):
    recorder = Recorder()
    trainer = TechniqueTrainer(model=_model(), args=_args(tmp_path, max_steps=6, lr_scheduler_type="cosine"),
                               train_dataset=Rows(), callbacks=[recorder], techniques=[{"name": "llrd", "decay": 0.5}])
    recorder.trainer = trainer
    trainer.train()
    top = [lrs["layer3"] for lrs in recorder.lrs]
    assert top == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])
    assert all(lrs["layer1"] == pytest.approx(0.25 * lrs["layer3"]) for lrs in recorder.lrs)


def test_gradient_accumulation_averages_the_micro_batches(tmp_path):
    grads = []
    for batch, accum in ((8, 1), (4, 2)):
        recorder = Recorder()
        args = _args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=1,
                     max_grad_norm=0.0)
        trainer = TechniqueTrainer(model=_model(dropout=0.0), args=args, train_dataset=Rows(8), callbacks=[recorder],
                                   techniques=[])
        recorder.trainer = trainer
        trainer.train()
        grads.append(recorder.grads[0])
    # one step over the same 8 rows: the mean of two half-batch means is the full batch's mean
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_llrd_and_child_tuning_d_through_the_constructor(tmp_path):
    model = _model()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = TechniqueTrainer(model=model, args=_args(tmp_path, max_steps=4, weight_decay=0.01), train_dataset=Rows(),
                               techniques=[{"name": "llrd", "decay": 0.5},
                                           {"name": "child_tuning", "mode": "D", "reserve_p": 0.2}])
    trainer.train()
    assert isinstance(trainer.bridge.optimizer, MaskedOptimizer)
    lrs = {g["group_name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs["layer3"] == pytest.approx(1e-3) and lrs["layer1"] == pytest.approx(1e-3 * 0.25)
    child = trainer.techniques[1]
    assert child.fisher_masks, "the Fisher pass ran at train begin"
    moved = 0
    for name, param in model.named_parameters():
        mask = child.fisher_masks.get(id(param))
        if mask is not None:
            assert torch.equal(param.detach()[mask == 0], pretrained[name][mask == 0]), name
            moved += int(not torch.equal(param.detach()[mask == 1], pretrained[name][mask == 1]))
    assert moved > 0
    assert not torch.equal(model.classifier.weight, pretrained["classifier.weight"])


def test_rdrop_changes_the_loss_through_the_constructor(tmp_path):
    model = _model()
    trainer = TechniqueTrainer(model=model, args=_args(tmp_path), techniques=[{"name": "rdrop", "alpha": 100.0}])
    batch = _batch()
    model.train()
    torch.manual_seed(0)
    first, second = model(**batch), model(**batch)  # the two dropout passes R-Drop will see
    plain, kl = 0.5 * (first.loss + second.loss), symmetric_kl(first.logits, second.logits)
    torch.manual_seed(0)
    adjusted = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(3))  # a batch mean all the same
    assert adjusted.item() == pytest.approx((plain + 100.0 * kl).item(), rel=1e-5)
    assert kl.item() > 0 and (adjusted - plain).item() == pytest.approx(100.0 * kl.item(), rel=1e-2)
    assert "labels" in batch
    model.eval()  # evaluation reports the model's own loss, from one forward pass (no R-Drop pass)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    assert trainer.compute_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)
    hook.remove()
    assert len(calls) == 2  # compute_loss's and the check's


class WeightWatch(TrainerCallback):
    """Records the classifier weights the model has during evaluation and after each step."""

    def __init__(self):
        self.trainer, self.evaluated, self.stepped, self.shadows, self.metrics = None, {}, {}, {}, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.stepped[state.global_step] = model.classifier.weight.detach().clone()

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        self.evaluated.setdefault(state.global_step, model.classifier.weight.detach().clone())

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.shadows[state.global_step] = self.trainer.techniques[0].shadow["classifier.weight"].clone()
        self.metrics.append(metrics)


def test_emas_weights_are_evaluated_during_training(tmp_path):
    watch = WeightWatch()
    args = _args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8)
    trainer = TechniqueTrainer(model=_model(), args=args, train_dataset=Rows(), eval_dataset=Rows(16, seed=1),
                               callbacks=[watch], techniques=[{"name": "ema", "decay": 0.9, "warmup": False}])
    watch.trainer = trainer
    trainer.train()
    assert sorted(watch.evaluated) == [2, 4, 6]
    for step in (2, 4, 6):
        assert torch.equal(watch.evaluated[step], watch.shadows[step]), step  # the shadow was evaluated
        assert not torch.equal(watch.evaluated[step], watch.stepped[step]), step  # not the raw weights
    for step in (2, 4):  # ... and training went on from the raw weights
        assert not torch.equal(watch.stepped[step + 1], watch.shadows[step])
    model = trainer.model
    assert torch.equal(model.classifier.weight, trainer.techniques[0].shadow["classifier.weight"])  # on_fit_end
    watch.evaluated.clear()
    trainer.evaluate()  # after training the model already is the shadow: no second swap
    assert torch.equal(watch.evaluated[6], model.classifier.weight)


def test_load_best_model_at_end_ends_with_the_best_steps_evaluated_weights(tmp_path):
    watch, scores = WeightWatch(), iter([3.0, 1.0, 2.0])
    args = _args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=True)
    trainer = TechniqueTrainer(model=_model(), args=args, train_dataset=Rows(), eval_dataset=Rows(16, seed=1),
                               callbacks=[watch], compute_metrics=lambda _: {"score": next(scores)},
                               techniques=[{"name": "ema", "decay": 0.9, "warmup": False}])
    watch.trainer = trainer
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    assert (tmp_path / "checkpoint-2" / STATE_FILE).is_file()
    final = trainer.model.classifier.weight
    assert torch.equal(final, watch.shadows[2])  # the weights evaluated at the best step
    assert not torch.equal(final, watch.shadows[6]) and not torch.equal(final, watch.stepped[2])


def test_resuming_restores_the_techniques_state(tmp_path):
    def trainer_for(max_steps):
        args = _args(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=2)
        return TechniqueTrainer(model=_model(), args=args, train_dataset=Rows(),
                                techniques=[{"name": "child_tuning", "mode": "D", "reserve_p": 0.2}, "ema"])

    def masks(trainer):
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        return {names[i]: m.clone() for i, m in trainer.techniques[0].fisher_masks.items()}

    whole = trainer_for(4)
    whole.train()
    resumed = trainer_for(4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.techniques[1].updates == 4  # 2 restored + 2 run (afresh it would be 2)
    first, again = masks(whole), masks(resumed)
    assert first.keys() == again.keys() and all(torch.equal(first[n], again[n]) for n in first)
    torch.testing.assert_close(resumed.techniques[1].shadow["classifier.weight"],
                               whole.techniques[1].shadow["classifier.weight"])


# --------------------------------------------------------------------------- refusals


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("techniques,settings,kwargs,words", [
    (["noisytune", "llrd"], {}, {"optimizers": "sgd"}, "optimizers="),
    ([{"name": "child_tuning", "mode": "F"}], {}, {"optimizer_cls_and_kwargs": (torch.optim.SGD, {"lr": 0.1})},
     "optimizer_cls_and_kwargs"),
    (["llrd"], {"optim": "adafactor"}, {}, "adafactor"),
    (["llrd"], {"lr_scheduler_type": "greedy", "eval_strategy": "epoch"}, {}, "greedy"),
    (["eda"], {}, {}, "prepare_data"),
    (["contrastive"], {}, {}, "pooled"),
    (["ema"], {}, {"model_init": "model_init"}, "model_init"),
])
def test_the_trainer_refuses_what_it_cannot_honour(tmp_path, techniques, settings, kwargs, words):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if kwargs.get("optimizers") == "sgd":
        kwargs = {"optimizers": (_sgd(model), None)}
    if "model_init" in kwargs:
        kwargs = {"model_init": _model}
    with pytest.raises(PlmtuneError, match=words):
        TechniqueTrainer(model=model, args=_args(tmp_path, **settings), train_dataset=Rows(), techniques=techniques,
                         **kwargs)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # refused before any change


def test_techniques_and_bridge_together_are_refused(tmp_path):
    model = _model()
    bridge = prepare(model, ["ema"], lr=1e-3, weight_decay=0.0, total_steps=1)
    with pytest.raises(PlmtuneError, match="not both"):
        TechniqueTrainer(model=model, args=_args(tmp_path), techniques=["ema"], bridge=bridge)


def test_an_optimiser_of_ones_own_is_kept_where_no_technique_needs_one(tmp_path):
    model = _model()
    sgd = _sgd(model)
    trainer = TechniqueTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=Rows(),
                               optimizers=(sgd, None), techniques=["ema"])
    trainer.train()
    assert trainer.bridge.optimizer is sgd and trainer.techniques[0].updates == 2


# --------------------------------------------------------------------------- the lower-level path


def test_trainer_runs_the_techniques(tmp_path):
    model = _model()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    bridge = prepare(model, [{"name": "llrd", "decay": 0.5}, {"name": "child_tuning", "mode": "D", "reserve_p": 0.2},
                             {"name": "rdrop", "alpha": 1.0}, {"name": "ema", "decay": 0.9}],
                     lr=1e-3, weight_decay=0.01, total_steps=8, warmup_steps=1, seed=0)
    lrs = {g["group_name"]: g["initial_lr"] for g in bridge.optimizer.param_groups}
    assert lrs["layer3"] == pytest.approx(1e-3) and lrs["layer1"] == pytest.approx(1e-3 * 0.25)  # 'bert.' prefix
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=8, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0, max_grad_norm=1.0)
    trainer = TechniqueTrainer(model=bridge.model, args=args, train_dataset=Rows(), bridge=bridge,
                               optimizers=(bridge.optimizer, bridge.scheduler), callbacks=[TechniqueCallback(bridge)])
    trainer.train()
    child = bridge.techniques[1]
    assert child.fisher_masks, "the Fisher pass ran at train begin"
    ema = bridge.techniques[3]
    assert ema.updates == 8  # one callback, though one was passed and the trainer adds its own where none is
    for name, param in model.named_parameters():
        mask = child.fisher_masks.get(id(param))
        if mask is not None:
            # EMA's shadow replaced the weights at the end; masked entries are the pretrained ones in both
            assert torch.equal(param.detach()[mask == 0], pretrained[name][mask == 0]), name
    assert not torch.equal(model.classifier.weight, pretrained["classifier.weight"])


def test_a_bridge_alone_fills_in_the_optimiser_and_the_callback(tmp_path):
    model = _model()
    bridge = prepare(model, [{"name": "child_tuning", "mode": "D", "reserve_p": 0.2}, "ema"], lr=1e-3,
                     weight_decay=0.0, total_steps=3)
    trainer = TechniqueTrainer(model=bridge.model, args=_args(tmp_path, max_steps=3), train_dataset=Rows(),
                               bridge=bridge)
    assert trainer.optimizer is bridge.optimizer and trainer.lr_scheduler is bridge.scheduler
    assert sum(isinstance(c, TechniqueCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert bridge.techniques[0].fisher_masks and bridge.techniques[1].updates == 3


def test_rdrop_changes_the_trainer_loss():
    model = _model()
    model.train()
    bridge = prepare(model, [{"name": "rdrop", "alpha": 10.0}], lr=1e-3, weight_decay=0.0, total_steps=1)
    trainer = TechniqueTrainer(model=model, args=TrainingArguments(output_dir="/tmp/plmtune-hf-test", use_cpu=True,
                                                                   report_to=[]), bridge=bridge)
    batch = _batch()
    torch.manual_seed(0)
    first, second = model(**batch), model(**batch)  # the two dropout passes R-Drop will see
    expected = 0.5 * (first.loss + second.loss) + 10.0 * symmetric_kl(first.logits, second.logits)
    torch.manual_seed(0)
    adjusted = trainer.compute_loss(model, batch)
    assert adjusted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert symmetric_kl(first.logits, second.logits).item() > 0


@pytest.mark.slow
def test_the_example_trainer_script_trains_the_real_model_with_techniques(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from shared_data import REPO, shared_dataset

    from plmtune.fewshot import make_fewshot

    (data,) = make_fewshot(shared_dataset("sst2"), tmp_path / "few", 16, [13])
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "hf_trainer.py"), "--data", str(data),
                           "--out", str(tmp_path / "run"), "--epochs", "6", "--max-test", "200"],
                          check=False, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labels: 2" in proc.stdout  # read from the data
    first, last = map(float, re.search(r"training loss first ([0-9.]+) last ([0-9.]+)", proc.stdout).groups())
    assert last < first  # it trains (this technique mix is no better than vanilla on SST-2: BENCHMARKS.md)
    assert re.search(r"dev accuracy [0-9.]+", proc.stdout)  # evaluated during training, with EMA's weights
    assert 0.0 <= float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1)) <= 1.0
