from __future__ import annotations

import json

import pytest
import torch

from plmtune.loading import load_recipe
from plmtune.data import EncodedSplit, PadCollator, eval_loader, load_task, train_loader
from plmtune.engine.loop import MetricLog, fit
from plmtune.errors import TrainingError
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import Technique, TrainContext


def _setup(toy_task, tokenizer, overrides=(), seed=0):
    recipe = load_recipe("baseline", ["model.dropout=0.0", *overrides])
    task = load_task(toy_task, recipe.data)
    torch.manual_seed(seed)
    encoder = tiny_bert(vocab_size=30522, seed=seed, dropout=0.0)
    model = SequenceClassifier(encoder, 2, dropout=0.0)
    collate = PadCollator(tokenizer.pad_token_id)
    enc = {k: EncodedSplit(v, tokenizer, 32) for k, v in task.splits.items()}
    loader = train_loader(enc["train"], recipe.train.batch_size, seed, collate)
    dev = eval_loader(enc["dev"], 16, collate)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=2)
    return recipe, model, loader, dev, ctx


def test_fit_learns_a_toy_task_and_logs_every_step(toy_task, tokenizer, tmp_path):
    recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.lr=5e-3", "train.epochs=8"])
    log = MetricLog(tmp_path / "metrics.jsonl")
    result = fit(model, [], ctx, loader, dev, recipe.train, log)
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 33))  # 4 steps x 8 epochs
    assert len(evals) == 8 and result.steps == 32
    assert train[-1]["lr"] == pytest.approx(0.0)
    assert result.best_dev["accuracy"] == 1.0
    assert sum(r["loss"] for r in train[-4:]) < sum(r["loss"] for r in train[:4]) / 2


def test_best_checkpoint_is_restored(toy_task, tokenizer):
    recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.lr=1e-3", "train.epochs=3"])

    class Spoil(Technique):
        """After the last epoch, wreck the weights: the loop must restore the best ones."""

        def on_epoch_end(self, ctx):
            if ctx.epoch == 2:
                with torch.no_grad():
                    ctx.model.classifier.weight.mul_(-1)

    result = fit(model, [Spoil(None)], ctx, loader, dev, recipe.train, MetricLog(None))
    assert result.best_epoch in (1, 2)
    assert result.dev_history[-1]["accuracy"] < result.best_dev["accuracy"] or result.best_epoch < 3


def test_max_steps_and_early_stopping(toy_task, tokenizer):
    recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.max_steps=6"])
    assert fit(model, [], ctx, loader, dev, recipe.train, MetricLog(None)).steps == 6
    recipe, model, loader, dev, ctx = _setup(
        toy_task, tokenizer, ["train.lr=1e-9", "train.epochs=50", "train.early_stopping_patience=2"])
    result = fit(model, [], ctx, loader, dev, recipe.train, MetricLog(None))
    assert result.stopped_early and result.epochs_run < 50


def test_same_seed_gives_identical_training(toy_task, tokenizer):
    def train_once():
        recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.epochs=2"], seed=3)
        fit(model, [], ctx, loader, dev, recipe.train, MetricLog(None))
        return model.classifier.weight.detach().clone()

    assert torch.equal(train_once(), train_once())


def test_gradient_accumulation_matches_a_bigger_batch(toy_task, tokenizer):
    class RecordGradients(Technique):
        """Records the gradients the optimiser steps with, through the wrap_optimizer hook."""

        grads = None

        def wrap_optimizer(self, optimizer, model, ctx):
            def record(opt, args, kwargs):
                RecordGradients.grads = torch.cat([p.grad.flatten() for p in model.parameters()])

            optimizer.register_step_pre_hook(record)
            return optimizer

    def first_step_gradient(overrides):
        recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.max_steps=1", "train.grad_clip=0",
                                                                       *overrides])
        fit(model, [RecordGradients(None)], ctx, loader, None, recipe.train, MetricLog(None))
        return RecordGradients.grads

    # The first 8 shuffled examples form one batch of 8, or two micro-batches of 4.
    full = first_step_gradient(["train.batch_size=8"])
    accumulated = first_step_gradient(["train.batch_size=4", "train.grad_accum=2"])
    assert full.abs().max() > 0
    assert torch.allclose(full, accumulated, atol=1e-6, rtol=1e-4)


def test_non_finite_loss_stops_with_the_step(toy_task, tokenizer):
    recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer)

    class Explode(Technique):
        def adjust_loss(self, loss, outputs, batch, ctx):
            return loss * float("inf") if ctx.step == 2 else loss

    with pytest.raises(TrainingError, match=r"became inf at step 3 .*train.lr"):
        fit(model, [Explode(None)], ctx, loader, dev, recipe.train, MetricLog(None))


def test_hooks_are_called_in_order(toy_task, tokenizer):
    recipe, model, loader, dev, ctx = _setup(toy_task, tokenizer, ["train.epochs=2"])
    calls = []

    class Spy(Technique):
        def on_fit_start(self, ctx):
            calls.append("start")

        def on_step_end(self, ctx):
            calls.append(f"step{ctx.step}")

        def on_epoch_end(self, ctx):
            calls.append(f"epoch{ctx.epoch}")

        def on_fit_end(self, ctx):
            calls.append("end")

    fit(model, [Spy(None)], ctx, loader, dev, recipe.train, MetricLog(None))
    assert calls == ["start", "step1", "step2", "step3", "step4", "epoch0",
                     "step5", "step6", "step7", "step8", "epoch1", "end"]
