"""The lifecycle contract across fits (docs/architecture.md, "Lifecycle").

A run has one :class:`TrainContext` (recipe, seed, tokenizer, labels); every fit gets fresh
per-fit state (step, epoch, totals) and freshly built technique objects. These tests hold
stages to that: the step and epoch a hook sees at ``on_fit_start`` are 0 in every fit, a LiST
student's first batch takes the warm-up path, and EMA's shadow and ChildTuning-D's mask are
made anew for each fit instead of leaking from the teacher into the student. The loop's rules and
the self-training stage (LiST's warm-up, its per-example gradients) run on a tiny BERT, MPNet and
RoBERTa (tests/contract/conftest.py); the EMA and ChildTuning-D rules hold the same self-training
run to what each technique does, which the per-architecture technique contract covers, so they run
on BERT only (``BERT_ONLY``), to keep the suite quick.
"""

from __future__ import annotations

import json

import pytest
import torch

from plmtune.data import EncodedSplit, PadCollator, eval_loader, load_task, train_loader
from plmtune.engine.loop import MetricLog, fit
from plmtune.loading import load_recipe
from plmtune.models import SequenceClassifier
from plmtune.run import run_recipe as run_stage
from plmtune.technique import Technique, TrainContext

BERT_ONLY = pytest.mark.parametrize("arch", ["bert"], indirect=True)


class Probe(Technique):
    """Records what a hook sees at the start of the fit."""

    def __init__(self, seen: list):
        super().__init__(None)
        self.seen = seen

    def on_fit_start(self, ctx):
        self.seen.append((ctx.step, ctx.epoch))


def test_every_fit_starts_at_step_and_epoch_zero_on_a_shared_context(toy_task, arch_tokenizer, tiny_arch_encoder):
    tokenizer = arch_tokenizer
    recipe = load_recipe("baseline", ["train.epochs=2"])
    task = load_task(toy_task, recipe.data)
    model = SequenceClassifier(tiny_arch_encoder(), 2)
    ctx = TrainContext(recipe=recipe, seed=0, num_labels=2, tokenizer=tokenizer)
    collate = PadCollator(tokenizer.pad_token_id)
    train = EncodedSplit(task.splits["train"], tokenizer, 32)
    dev = EncodedSplit(task.splits["dev"], tokenizer, 32)
    seen: list = []
    for _ in range(2):  # as a stage does: a teacher, then a student, on one context
        fit(model, [Probe(seen)], ctx, train_loader(train, 8, 0, collate), eval_loader(dev, 16, collate),
            recipe.train, MetricLog(None))
    assert seen == [(0, 0), (0, 0)]


def _pool(toy_task, n=24):
    rows = [json.loads(line) for line in (toy_task / "train.jsonl").read_text().splitlines()]
    (toy_task / "unlabeled.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[:n]))
    return toy_task


def _self_training(*extra):
    # baseline + a small self-training section: teacher 8 steps, students of 4 steps
    return load_recipe("baseline", ["train.epochs=2", "self_training.iterations=2", "self_training.unlabeled_cap=16",
                                    "self_training.student_steps=4", "self_training.batch_size=8",
                                    "self_training.kd_warmup=0.5", "self_training.reweight=false", *extra])


def test_a_list_students_first_batch_takes_the_warm_up_path(toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.stages.self_training import PseudoLabelLoss

    tiny_backbone()
    first: dict[int, bool] = {}
    real = PseudoLabelLoss.adjust_loss

    def spy(self, loss, outputs, batch, ctx):
        first.setdefault(id(self), ctx.step < self.warmup_steps)
        return real(self, loss, outputs, batch, ctx)

    monkeypatch.setattr(PseudoLabelLoss, "adjust_loss", spy)
    run_stage(_self_training(), _pool(toy_task), tmp_path / "run", seed=3)
    assert list(first.values()) == [True, True]  # both students began with knowledge distillation


@BERT_ONLY
def test_ema_shadow_starts_from_each_fits_own_weights(toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.techniques.ema import EMA

    tiny_backbone()
    fresh: list[bool] = []
    real = EMA.on_fit_start

    def spy(self, ctx):
        real(self, ctx)
        now = self._tensors(ctx)
        fresh.append(all(torch.equal(self.shadow[k], v) for k, v in now.items()))

    monkeypatch.setattr(EMA, "on_fit_start", spy)
    run_stage(_self_training("techniques=[ema]"), _pool(toy_task), tmp_path / "run", seed=3)
    assert len(fresh) == 5 and all(fresh)  # teacher, then per iteration a student and a labelled finish


@BERT_ONLY
def test_child_tuning_d_computes_its_mask_for_every_fit(toy_task, tmp_path, tiny_backbone, monkeypatch):
    from plmtune.techniques import child_tuning

    tiny_backbone()
    calls: list[int] = []
    real = child_tuning.fisher_information

    def counting(model, loader, *args, **kwargs):
        calls.append(len(loader))
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(child_tuning, "fisher_information", counting)
    run_stage(_self_training("techniques=[{name: child_tuning, mode: D}]", "self_training.iterations=1"),
              _pool(toy_task), tmp_path / "run", seed=3)
    # teacher (4 labelled batches), student (pseudo-labelled: 2 batches), labelled finish (4 batches)
    assert calls == [4, 2, 4]


def test_a_technique_object_serves_one_fit_only(toy_task, arch_tokenizer, tiny_arch_encoder):
    tokenizer = arch_tokenizer
    recipe = load_recipe("baseline", ["train.epochs=1"])
    task = load_task(toy_task, recipe.data)
    model = SequenceClassifier(tiny_arch_encoder(), 2)
    ctx = TrainContext(recipe=recipe, seed=0, num_labels=2, tokenizer=tokenizer)
    loader = train_loader(EncodedSplit(task.splits["train"], tokenizer, 32), 8, 0, PadCollator(tokenizer.pad_token_id))
    probe = Probe([])
    fit(model, [probe], ctx, loader, None, recipe.train, MetricLog(None))
    with pytest.raises(RuntimeError, match="already served a fit"):
        fit(model, [probe], ctx, loader, None, recipe.train, MetricLog(None))
